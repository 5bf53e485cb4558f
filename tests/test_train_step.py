"""The train step of the three stages on the tiny config: which parameters train, that the
loss falls, and that sharding and gradient accumulation do not change the numbers.

Each stage's step is compiled once (a module fixture runs it on one device over a small
fixed synthetic data set) and the tests read what that run recorded.
"""
import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from janus_jax.train import loop, recipe
from janus_jax.train.partition import STAGE_I, STAGE_II, STAGE_III, path_of

# The data set: 8 examples per kind, batch 8, seq 64 (janus_jax/train/synthetic.py).
LEARN_STEPS = 100
# Halves compile time of the tiny programs; the tiny steps run about as fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Top-level modules that must change in each stage (JANUS.md §6.2); everything else
# must stay bit-identical. Written out here, independent of partition.STAGE_*.
TRAINS = {1: {"aligner", "gen_aligner", "gen_embed", "gen_head"},
          2: {"aligner", "gen_aligner", "gen_embed", "gen_head", "llm"},
          3: {"aligner", "gen_aligner", "gen_embed", "gen_head", "llm", "vision"}}
PATTERNS = {1: STAGE_I, 2: STAGE_II, 3: STAGE_III}


def tiny_config(stage: int, **changes):
  c = recipe.base_config("tiny")
  c.stage = stage
  c.trainable = PATTERNS[stage]
  c.data.ratios = dict(understanding=1, text=1, t2i=1)
  c = recipe.finish(c)
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 0
  c.xla_compiler_options = FAST_COMPILE
  # Adam moves a weight by lr·g/(|g| + eps): at eps = 1e-8 a gradient of ~1e-8 is amplified
  # 3e5-fold, so float32 rounding of near-zero gradients decides updates of a good part of
  # lr. A larger eps keeps updates smooth in the gradient (see the equivalence tests).
  c.optimizer.eps = 1e-6
  for key, value in changes.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


def run_steps(config, devices, steps):
  """(full params before, [full params after step 1, 2], per-step host metrics, state)."""
  run = loop.setup(config, devices=devices)
  trainable, frozen = run.params()
  before = jax.device_get({**trainable, **frozen})
  state = run.new_state(trainable)
  data = run.data()
  batch = next(data)
  compiled = run.compile(batch)
  after, history = [], []
  for i in range(steps):
    if i:
      batch = next(data)
    state, metrics = compiled(state, frozen, batch)
    history.append(jax.device_get(metrics))
    if i < 2:
      after.append(jax.device_get({**state["params"], **frozen}))
  return before, after, history, state


@pytest.fixture(scope="module")
def stage_runs():
  return {stage: run_steps(tiny_config(stage), jax.devices()[:1], LEARN_STEPS)
          for stage in (1, 2, 3)}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_exactly_the_stage_parameters_change_and_frozen_ones_stay_bit_identical(stage_runs, stage):
  before, after, _, _ = stage_runs[stage]
  changed, unchanged = set(), set()
  for key, old in flatten_dict(before).items():
    new = flatten_dict(after[0])[key]
    (changed if not np.array_equal(old, new) else unchanged).add(key)
  for key in changed:
    assert key[0] in TRAINS[stage], f"frozen {path_of(key)} changed in stage {stage}"
  for key in unchanged:
    # A trained leaf may keep its value only where this batch gives it no gradient at all.
    assert key[0] not in TRAINS[stage], f"trainable {path_of(key)} did not change"
  assert not any(k[0] == "vq" for k in changed)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_frozen_parameters_hold_no_optimizer_state(stage_runs, stage):
  _, _, _, state = stage_runs[stage]
  trainable_paths = {path_of(k) for k in flatten_dict(state["params"])}
  assert {p.split("/")[0] for p in trainable_paths} == TRAINS[stage]
  # Adam's two moments mirror the trainable tree exactly; the rest are scalar counts.
  opt_leaves = jax.tree_util.tree_leaves_with_path(state["opt"])
  big = [leaf for _, leaf in opt_leaves if leaf.ndim > 0]
  n_trainable = sum(x.size for x in jax.tree.leaves(state["params"]))
  assert sum(x.size for x in big) == 2 * n_trainable
  for path, leaf in opt_leaves:
    if leaf.ndim:
      keys = "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
      assert any(keys.endswith(t) for t in trainable_paths), keys


@pytest.mark.parametrize("stage,kinds", [(1, ["t2i"]), (2, ["t2i", "understanding", "text"]),
                                         (3, ["t2i", "understanding", "text"])])
def test_loss_falls_by_more_than_half_on_a_fixed_data_set(stage_runs, stage, kinds):
  """Threshold: the mean per-kind loss over the last 10 of 100 steps is below half of the
  first step's (random init starts near ln(vocab)). Stage I trains no text path, so only
  its image loss must fall."""
  _, _, history, _ = stage_runs[stage]
  for kind in kinds:
    losses = [h[f"loss/{kind}"] for h in history if h[f"weight/{kind}"] > 0]
    first, last = losses[0], float(np.mean(losses[-10:]))
    assert last < 0.5 * first, (stage, kind, first, last)


def _assert_same_metrics(got, want, keys):
  """Step 1 from the same params: float32 rounding (1e-5). Step 2 starts from params that
  already differ by Adam-amplified rounding (see below): 1e-4."""
  for step, (g, w) in enumerate(zip(got, want)):
    for key in keys:
      np.testing.assert_allclose(g[key], w[key], rtol=1e-5 if step == 0 else 1e-4,
                                 err_msg=f"{key} at step {step + 1}")


def _relative_update_difference(before, got, want):
  """|got - want| / |want - before| over the whole param tree (2-norms).

  Per-element comparisons would be dominated by weights whose gradient is ~0: Adam moves
  those by lr·g/(|g| + eps), which float32 rounding of g can change by a good part of lr.
  """
  flat_before, flat_got, flat_want = map(flatten_dict, (before, got, want))
  diff = sum(float(np.sum((flat_got[k] - flat_want[k]) ** 2)) for k in flat_want)
  update = sum(float(np.sum((flat_want[k] - flat_before[k]) ** 2)) for k in flat_want)
  return (diff / update) ** 0.5


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py)")
def test_sharded_step_equals_single_device(stage_runs):
  """data 2 x fsdp 2 x tensor 2 vs one device, Stage III (every part but the VQ trains):
  the losses of two steps and the params after them agree to float32 rounding."""
  before, single_after, single_history, _ = stage_runs[3]
  config = tiny_config(3, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  _, after, history, state = run_steps(config, jax.devices()[:8], 2)
  assert state["params"]["llm"]["layers"]["attn"]["q"].sharding.spec == P(
      None, "fsdp", "tensor", None)
  _assert_same_metrics(history, single_history[:2], ("loss", "grad_norm"))
  assert _relative_update_difference(before, after[1], single_after[1]) < 1e-4


def test_gradient_accumulation_equals_the_whole_batch(stage_runs):
  """4 micro-batches of 2 rows inside the step vs the 8-row batch at once."""
  before, single_after, single_history, _ = stage_runs[3]
  _, after, history, _ = run_steps(tiny_config(3, grad_accum_steps=4), jax.devices()[:1], 2)
  _assert_same_metrics(history, single_history[:2],
                       ("loss", "grad_norm", "loss/t2i", "loss/understanding", "weight"))
  assert _relative_update_difference(before, after[1], single_after[1]) < 1e-4


def test_batch_that_does_not_divide_into_micro_batches_is_rejected():
  with pytest.raises(ValueError, match="grad_accum_steps"):
    loop.setup(tiny_config(2, grad_accum_steps=3), devices=jax.devices()[:1])
