"""Sampling against transformers' generate: greedy image codes and greedy answers token for
token, on a tiny random Janus converted through our converter (float32, CPU)."""
import jax
import numpy as np
import pytest
import torch

import janus_jax
from janus_jax import sampling, sharding
from convert.pipeline import convert
from tests import checkpoints, reference as ref

PROMPTS = ["a red circle above a blue square", "a cat"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model = ref.build_hf_model(ref.GQA, seed=11)
  model.generation_config.pad_token_id = ref.TOKENS["pad_token_id"]
  model.generation_config.bos_token_id = ref.TOKENS["bos_token_id"]
  model.generation_config.eos_token_id = ref.TOKENS["eos_token_id"]
  model.generation_config.generation_kwargs = {"boi_token_id": ref.TOKENS["boi_token_id"]}
  root = tmp_path_factory.mktemp("sampling")
  src = checkpoints.write_hf(model, str(root / "src"))
  convert(src, str(root / "dst"), dtype="float32", progress=False)
  return model, janus_jax.load(str(root / "dst"), dtype="float32")


# min_steps 1: this model's 16 image tokens in the most segments (`sampling.window_segments`;
# by default so few tokens take one).
@pytest.mark.parametrize("cfg_weight, min_steps", [(2.0, None), (5.0, None), (5.0, 1)])
def test_greedy_image_codes_equal_transformers(setup, cfg_weight, min_steps, monkeypatch):
  model, p = setup
  if min_steps is not None:
    monkeypatch.setattr(sampling, "SEGMENT_MIN_STEPS", min_steps)
    assert sampling.window_segments(p.config.vq.num_tokens, True) == sampling.WINDOW_SEGMENTS
  batch = p.processor.generation_batch(PROMPTS)
  assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()   # left padding
  with torch.no_grad():
    want = model.generate(torch.from_numpy(batch["input_ids"]).long(),
                          attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
                          generation_mode="image", do_sample=False,
                          guidance_scale=cfg_weight).numpy()
  got = sampling.generate_image_codes(p, PROMPTS, cfg_weight=cfg_weight, top_k=1)
  assert got.shape == want.shape == (2, p.config.vq.num_tokens)
  np.testing.assert_array_equal(got, want)


def test_window_segments_need_enough_steps():
  assert sampling.window_segments(576, True) == sampling.WINDOW_SEGMENTS   # Janus' images
  assert sampling.window_segments(100, True) == 99 // sampling.SEGMENT_MIN_STEPS
  assert sampling.window_segments(36, True) == sampling.window_segments(16, True) == 1
  assert sampling.window_segments(576, False) == 1                        # the scanned stack


def test_images_are_decoded_like_the_reference(setup):
  model, p = setup
  codes = sampling.generate_image_codes(p, PROMPTS[:1], top_k=1)
  with torch.no_grad():
    pixels = model.decode_image_tokens(torch.from_numpy(codes).long()).float().numpy()
  want = np.clip((pixels + 1) / 2 * 255, 0, 255).astype(np.uint8)
  got = sampling.decode_images(p, codes)
  assert got.dtype == np.uint8 and got.shape == want.shape
  assert np.mean(got == want) > 0.999 and np.abs(got.astype(int) - want).max() <= 1


def _chat_inputs(p):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 28, 3), dtype=np.uint8),
            rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)]
  questions = ["What colour is the circle?", "How many shapes are there in this picture at all?"]
  return questions, images


def test_greedy_answers_equal_transformers(setup):
  model, p = setup
  questions, images = _chat_inputs(p)
  batch = p.processor.understanding_batch(questions, images)
  pixels = torch.from_numpy(batch["pixel_values"][:, 0].transpose(0, 3, 1, 2).copy())
  new = 12
  with torch.no_grad():
    out = model.generate(torch.from_numpy(batch["input_ids"]).long(),
                         attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
                         pixel_values=pixels, max_new_tokens=new,
                         do_sample=False).numpy()[:, batch["input_ids"].shape[1]:]
  got = sampling.generate_text_tokens(p, questions, images, max_new_tokens=new)
  eos = p.config.eos_token_id
  for row_got, row_want in zip(got, out):
    stop = np.nonzero(row_want == eos)[0]
    end = stop[0] + 1 if len(stop) else new
    np.testing.assert_array_equal(row_got[:end], row_want[:end])
  assert (got[:, 0] != got[:, 1]).any() or len(set(got[0])) > 1   # not a degenerate model
  answers = sampling.generate_text(p, questions, images, max_new_tokens=new)
  for answer, row in zip(answers, got):
    stop = np.nonzero(row == eos)[0]
    assert answer == p.processor.decode(row[:stop[0]] if len(stop) else row)


def test_same_seed_same_images_and_independent_of_batching(setup):
  _, p = setup
  kw = dict(cfg_weight=3.0, temperature=1.0, seed=7)
  together = sampling.generate_image_codes(p, PROMPTS, num_images=2, **kw)
  again = sampling.generate_image_codes(p, PROMPTS, num_images=2, **kw)
  np.testing.assert_array_equal(together, again)
  alone = sampling.generate_image_codes(p, PROMPTS, num_images=2, batch_size=1, **kw)
  np.testing.assert_array_equal(together, alone)
  other_seed = sampling.generate_image_codes(p, PROMPTS, num_images=2, cfg_weight=3.0, seed=8)
  assert not np.array_equal(together, other_seed)
  assert not np.array_equal(together[0], together[1])   # two images of one prompt differ


def test_top_k_and_top_p_restrict_the_choice(setup):
  _, p = setup
  greedy = sampling.generate_image_codes(p, PROMPTS, top_k=1, seed=1)
  tiny_p = sampling.generate_image_codes(p, PROMPTS, top_p=1e-6, seed=1)
  np.testing.assert_array_equal(greedy, tiny_p)         # top_p -> 0 keeps only the argmax
  sampled = sampling.generate_image_codes(p, PROMPTS, top_k=3, seed=1)
  assert not np.array_equal(greedy, sampled)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py)")
def test_sharded_sampling_gives_the_same_tokens(setup, tmp_path):
  _, p = setup
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = janus_jax.load(p.directory, dtype="float32", mesh=mesh)
  kw = dict(num_images=2, cfg_weight=4.0, seed=3)
  np.testing.assert_array_equal(sampling.generate_image_codes(sharded, PROMPTS, mesh=mesh, **kw),
                                sampling.generate_image_codes(p, PROMPTS, **kw))
  questions, images = _chat_inputs(p)
  np.testing.assert_array_equal(
      sampling.generate_text_tokens(sharded, questions, images, max_new_tokens=8, mesh=mesh),
      sampling.generate_text_tokens(p, questions, images, max_new_tokens=8))
