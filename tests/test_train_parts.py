"""The pieces of the trainer on their own: loss, freezing rules, schedule, FLOP count,
synthetic data, and the published hyper-parameters in the stage configs."""
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax import JanusConfig, sharding
from janus_jax.data.batch import HEAD_IMAGE, HEAD_TEXT
from janus_jax.modules.janus import Janus
from janus_jax.train import loss as loss_lib
from janus_jax.train import metrics, partition, synthetic
from janus_jax.train.optimizer import learning_rate_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))


@pytest.fixture(scope="module")
def tiny():
  """(config, abstract params, random head params): the heads are all the loss reads."""
  import janus_jax
  config = JanusConfig.preset("tiny")
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(0, 0.1, shape), jnp.float32)
  d, g, v = config.llm.hidden_size, config.gen_head_dim, config.vq.codebook_size
  heads = {"llm": {"lm_head": {"kernel": normal(d, config.llm.vocab_size)}},
           "gen_head": {"fc1": {"kernel": normal(d, g), "bias": normal(g)},
                        "fc2": {"kernel": normal(g, v), "bias": normal(v)}}}
  return config, janus_jax.abstract_params(config), heads


def test_token_losses_match_the_model_heads_and_do_not_depend_on_chunking(tiny):
  config, _, params = tiny
  rng = np.random.default_rng(0)
  b, t, d = 2, 16, config.llm.hidden_size
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  targets = rng.integers(0, 256, (b, t)).astype(np.int32)
  head = rng.integers(0, 2, (b, t)).astype(np.int32)
  model = Janus(config)
  text = model.apply({"params": params}, hidden, method=Janus.text_logits)
  image = model.apply({"params": params}, hidden, method=Janus.gen_logits)
  logits = np.where((head == HEAD_IMAGE)[..., None], np.pad(image, ((0, 0), (0, 0), (0, 256))),
                    text)
  valid = np.where((head == HEAD_IMAGE)[..., None], np.arange(512) < 256, True)
  logits = np.where(valid, logits, -np.inf)
  want = (jax.nn.logsumexp(logits, -1) - np.take_along_axis(logits, targets[..., None], -1)[..., 0])
  for chunk in (0, 4, 8):
    got = loss_lib.token_losses(params, hidden, targets, head, chunk=chunk)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="not a multiple of loss_chunk"):
    loss_lib.token_losses(params, hidden, targets, head, chunk=5)


def test_loss_is_weighted_mean_per_kind_and_nan_weights_give_nan():
  ce = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  weights = jnp.array([[1.0, 1.0, 0.0, 2.0]])
  kind = jnp.array([[1, 1, 3, 3]])
  out = loss_lib.losses_from_sums(loss_lib.weighted_sums(ce, weights, kind))
  assert float(out["loss"]) == pytest.approx((1 + 2 + 8) / 4)
  assert float(out["loss/understanding"]) == pytest.approx(1.5)
  assert float(out["loss/t2i"]) == pytest.approx(4.0)
  assert float(out["loss/text"]) == 0.0
  bad = loss_lib.losses_from_sums(loss_lib.weighted_sums(ce, weights.at[0, 0].set(jnp.nan), kind))
  assert np.isnan(float(bad["loss"]))


def test_trainable_rules_reject_typos_and_the_vq(tiny):
  _, params, _ = tiny
  mask = partition.trainable_mask(params, partition.STAGE_I)
  trainable, frozen = partition.split(params, mask)
  assert set(trainable) == {"aligner", "gen_aligner", "gen_embed", "gen_head"}
  assert set(frozen) == {"llm", "vision", "vq"}
  merged = partition.merge(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  with pytest.raises(ValueError, match="match no parameter"):
    partition.trainable_mask(params, ["gen_heads/.*"])
  with pytest.raises(ValueError, match="VQ tokenizer is never trained"):
    partition.trainable_mask(params, [".*"])


def test_learning_rate_warms_up_linearly_then_stays_constant():
  schedule = learning_rate_schedule(1e-3, 600)
  assert float(schedule(0)) == pytest.approx(1e-3 / 600)
  assert float(schedule(299)) == pytest.approx(0.5e-3)
  assert float(schedule(599)) == pytest.approx(1e-3)
  assert float(schedule(100_000)) == pytest.approx(1e-3)
  assert float(learning_rate_schedule(4e-5, 0)(0)) == pytest.approx(4e-5)


def test_optional_cosine_decay_after_the_warm_up():
  schedule = learning_rate_schedule(2e-3, 20, decay_steps=120, final_fraction=0.1)
  assert float(schedule(9)) == pytest.approx(1e-3)                 # warm-up unchanged
  assert float(schedule(20)) == pytest.approx(2e-3)                # decay starts at 1
  assert float(schedule(70)) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5))   # half way
  assert float(schedule(120)) == pytest.approx(2e-4)
  assert float(schedule(10_000)) == pytest.approx(2e-4)            # then flat
  with pytest.raises(ValueError, match="decay_steps"):
    learning_rate_schedule(1e-3, 50, decay_steps=40)


def test_train_flops_are_six_n_per_token_when_the_llm_alone_trains(tiny):
  config, params, _ = tiny
  mask = partition.trainable_mask(params, ["llm/layers/.*"])
  b, t = 2, 32
  got = metrics.train_flops(config, mask, b, t, images_per_row=0)
  llm = config.llm
  n_layer = llm.num_layers * (llm.hidden_size * llm.head_dim * (2 * llm.num_heads + 2 * llm.num_kv_heads)
                              + 3 * llm.hidden_size * llm.intermediate_size)
  attention = llm.num_layers * 4 * t * llm.num_heads * llm.head_dim
  heads = 2 * (llm.hidden_size * llm.vocab_size + llm.hidden_size * config.gen_head_dim
               + config.gen_head_dim * config.vq.codebook_size)
  gen_aligner = 2 * (config.vq.codebook_dim * llm.hidden_size + llm.hidden_size ** 2)
  # Layers train (3x forward), heads only pass gradients down (2x), gen_aligner forward only.
  want = b * t * (3 * (2 * n_layer + attention) + 2 * heads + gen_aligner)
  assert got == pytest.approx(want)


def _synthetic(mesh, state=None):
  config = JanusConfig.preset("tiny")
  data_cfg = synthetic.default_config()
  it = synthetic.build_train_iterator(data_cfg, model_config=config, global_batch_size=8,
                                      mesh=mesh, seed=3)
  if state:
    it.set_state(state)
  return it


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py)")
def test_synthetic_batches_resume_and_do_not_depend_on_the_mesh():
  one = _synthetic(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  eight = _synthetic(sharding.make_mesh(2, 2, 2))
  first = [jax.device_get(next(one)) for _ in range(3)]
  state = one.get_state()
  later = jax.device_get(next(one))
  for want in first:
    got = jax.device_get(next(eight))
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  resumed = jax.device_get(next(_synthetic(sharding.make_mesh(2, 2, 2), state)))
  for key in later:
    np.testing.assert_array_equal(resumed[key], later[key])
  batch = first[0]
  assert batch["input_ids"].shape == (8, 64)
  assert set(np.unique(batch["kind"])) <= {0, 1, 2, 3}
  # Loss positions: image codes through the gen head, text through lm_head.
  scored = batch["loss_weights"] > 0
  assert np.all(batch["target_head"][scored & (batch["kind"] == 3)] == HEAD_IMAGE)
  assert np.all(batch["target_head"][scored & (batch["kind"] != 3)] == HEAD_TEXT)
  assert batch["segment_ids"].max() > 1      # packed rows


@pytest.mark.parametrize("stage,lr,warmup,batch,ratios", [
    (1, 1e-3, 600, 256, (1, 0, 3)), (2, 1e-4, 5000, 512, (2, 3, 5)),
    (3, 4e-5, 0, 128, (5, 1, 4))])
def test_stage_configs_hold_the_published_recipe(stage, lr, warmup, batch, ratios):
  module = importlib.import_module(f"stage{stage}")
  for variant in ("pro_1b", "pro_7b"):
    c = module.get_config(variant)
    assert (c.optimizer.learning_rate, c.optimizer.warmup_steps, c.global_batch_size) == (
        lr, warmup, batch)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay, c.optimizer.clip_norm) == (
        0.9, 0.95, 0.0, 1.0)
    assert tuple(c.data.ratios[k] for k in ("understanding", "text", "t2i")) == ratios
    assert c.model.dtype == "bfloat16" and c.model.param_dtype == "float32"
  assert module.get_config("tiny").init.source == "random"
