"""The two decode forms of janus_jax.sampling give the same tokens: layer by layer over
per-layer weights and caches (the CPU default) and the scanned layer stack (other backends)."""
import numpy as np
import pytest

import janus_jax
from janus_jax import sampling
from convert.pipeline import convert
from tests import checkpoints, reference as ref

PROMPTS = ["a red circle above a blue square", "a cat"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  model = ref.build_hf_model(ref.MHA, seed=5)
  root = tmp_path_factory.mktemp("paths")
  src = checkpoints.write_hf(model, str(root / "src"))
  convert(src, str(root / "dst"), dtype="float32", progress=False)
  return janus_jax.load(str(root / "dst"), dtype="float32")


@pytest.fixture
def decode_form(monkeypatch):
  def use(unrolled):
    monkeypatch.setattr(sampling, "UNROLLED_DECODE", unrolled)
    assert sampling.unrolled_decode_default() is unrolled
  return use


def test_image_codes_equal_in_both_forms(loaded, decode_form):
  kw = dict(num_images=2, cfg_weight=3.0, seed=4)
  decode_form(True)
  unrolled = [sampling.generate_image_codes(loaded, PROMPTS, top_k=1, **kw),
              sampling.generate_image_codes(loaded, PROMPTS, top_k=5, **kw)]
  decode_form(False)
  scanned = [sampling.generate_image_codes(loaded, PROMPTS, top_k=1, **kw),
             sampling.generate_image_codes(loaded, PROMPTS, top_k=5, **kw)]
  for a, b in zip(unrolled, scanned):
    np.testing.assert_array_equal(a, b)


def test_answers_equal_in_both_forms(loaded, decode_form):
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, (30, 50, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 20, 3), dtype=np.uint8)]
  questions = ["What is this?", "How many shapes are there in this picture at all?"]
  decode_form(True)
  unrolled = sampling.generate_text_tokens(loaded, questions, images, max_new_tokens=10)
  decode_form(False)
  scanned = sampling.generate_text_tokens(loaded, questions, images, max_new_tokens=10)
  np.testing.assert_array_equal(unrolled, scanned)


def test_decode_weights_are_kept_while_their_params_live(loaded, decode_form):
  """The decode weights are derived once per params and reused; replacing a weight they
  came from derives them again (never stale), and they go when their params go."""
  import gc
  import jax
  decode_form(True)
  cfg = loaded.config
  form = sampling._decode_form(cfg, None)
  params = jax.tree.map(lambda a: a + 0, loaded.params)       # arrays of this test's own
  first = sampling.decode_weights(params, cfg, form, "text")
  assert sampling.decode_weights(params, cfg, form, "text") is first
  assert sampling.decode_weights(params, cfg, form, "gen") is not first   # another head
  before = len(sampling._DECODE_WEIGHTS)
  kernel = params["llm"]["lm_head"]["kernel"]
  params["llm"]["lm_head"]["kernel"] = kernel * 2
  again = sampling.decode_weights(params, cfg, form, "text")
  assert again is not first
  np.testing.assert_allclose(np.asarray(again["head"][0]), 2 * np.asarray(first["head"][0]))
  del kernel, first
  gc.collect()
  assert len(sampling._DECODE_WEIGHTS) == before   # the old kernel's entry went with it
  del params, again
  gc.collect()
  assert len(sampling._DECODE_WEIGHTS) == before - 2   # this params' text and gen entries
