"""The compiler options janus_jax compiles with (janus_jax/xla.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax import xla


@pytest.fixture
def ynnpack(monkeypatch):
  """Sets xla.YNNPACK for one test, with no YNNPACK option in XLA_FLAGS."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if xla.YNN_OPTION not in f]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  def set_(value):
    monkeypatch.setattr(xla, "YNNPACK", value)
  return set_


def test_options_follow_the_switch_and_only_apply_on_the_cpu(ynnpack, monkeypatch):
  ynnpack(False)
  assert xla.compiler_options("cpu") == {xla.YNN_OPTION: ""}
  assert xla.compiler_options("tpu") == {} and xla.compiler_options("gpu") == {}
  ynnpack(True)
  assert xla.compiler_options("cpu") == {}
  ynnpack(None)   # the default: off, but for decode loops
  assert xla.compiler_options("cpu") == {xla.YNN_OPTION: ""}
  assert xla.compiler_options("cpu", decode=True) == {}
  assert xla.compiler_options("tpu", decode=True) == {}
  ynnpack(False)  # a user's own choice in XLA_FLAGS wins
  monkeypatch.setenv("XLA_FLAGS", f"--{xla.YNN_OPTION}=individual_dot")
  assert xla.compiler_options("cpu") == {}


def test_cpu_feature_read_from_cpuinfo():
  with open("/proc/cpuinfo") as f:
    flags = next(line for line in f if line.startswith("flags")).split()
  assert xla.cpu_has_avx512() == ("avx512f" in flags)


def test_programs_without_ynnpack_compute_the_same_values(ynnpack):
  """The option changes which kernels run, not what they compute: a projection chain
  compiled both ways agrees to float32 rounding, and the "off" program has no YNNPACK
  fusion left in it."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 256)), jnp.float32)
  w1 = jnp.asarray(rng.normal(size=(256, 512)) / 16, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(512, 256)) / 22, jnp.float32)
  f = lambda x, w1, w2: jax.nn.silu(x @ w1) @ w2
  ynnpack(False)
  off = xla.jit(f, "cpu").lower(x, w1, w2).compile()
  assert "__ynn" not in off.as_text()
  ynnpack(True)
  default = xla.jit(f, "cpu")
  np.testing.assert_allclose(np.asarray(off(x, w1, w2)), np.asarray(default(x, w1, w2)),
                             rtol=1e-5, atol=1e-5)


def test_jitted_library_functions_run_inside_a_users_trace(ynnpack):
  """jax takes compiler options only on a top-level jit; inside jax.eval_shape or a user's
  jit, xla.jit functions (init_params among them) are staged as plain nested jits."""
  import janus_jax
  from janus_jax.config import JanusConfig
  ynnpack(False)                      # options are non-empty: the case that used to raise
  cfg = JanusConfig.preset("tiny")
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: janus_jax.init_params(cfg, key))
  params = janus_jax.init_params(cfg, key)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == jax.tree.map(
      lambda a: (a.shape, a.dtype), params)
  f = xla.jit(lambda x: jnp.sin(x) * 2, "cpu")
  x = jnp.linspace(0, 1, 8)
  np.testing.assert_allclose(np.asarray(jax.jit(lambda x: f(x) + 1)(x)),
                             np.asarray(f(x)) + 1, rtol=1e-6)
