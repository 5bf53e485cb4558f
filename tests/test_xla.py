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
