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
  # a program run once: no LLVM optimisation on the CPU, nothing added elsewhere
  once = {"xla_backend_optimization_level": 0}
  assert xla.compiler_options("cpu", once=True) == once | {xla.YNN_OPTION: ""}
  assert xla.compiler_options("tpu", once=True) == {}
  ynnpack(False)  # a user's own choice in XLA_FLAGS wins
  monkeypatch.setenv("XLA_FLAGS", f"--{xla.YNN_OPTION}=individual_dot")
  assert xla.compiler_options("cpu") == {}
  assert xla.compiler_options("cpu", once=True) == once


def test_a_program_run_once_compiles_and_runs(ynnpack):
  """xla.jit(once=True) compiles with its options and gives the function's values."""
  ynnpack(None)
  f = lambda key: jax.random.normal(key, (4, 3)) * 2.0 + 1.0
  key = jax.random.key(1)
  got = xla.jit(f, once=True)(key)
  np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(f)(key)), rtol=1e-6)


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


# Each case runs in its own process: jax's cache settings are process-wide.
CACHE_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from janus_jax import xla
jax.jit(lambda x: x + 1)(1.0)          # a compile before the cache is turned on
arg = json.loads(sys.argv[1])
directory = xla.use_compilation_cache(arg)
with xla.counting_cache_hits() as hits:
  jax.jit(lambda x: jnp.sin(x) * 3 + jnp.cos(x)).lower(jnp.ones(8)).compile()(jnp.ones(8))
print(json.dumps(dict(directory=directory, hits=hits[0],
                      max_size=jax.config.jax_compilation_cache_max_size)))
"""


def _cache_run(tmp_path, arg=None, **env):
  import json
  import subprocess
  import sys
  base = {k: v for k, v in os.environ.items()
          if k not in ("JAX_COMPILATION_CACHE_DIR", xla.CACHE_ENV)}
  base.update(HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu",
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
  done = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, json.dumps(arg)], env=base,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_compilation_cache_default_dir_is_bounded_and_a_second_process_loads_from_it(tmp_path):
  first = _cache_run(tmp_path)
  home = str(tmp_path / "home")
  assert first["directory"].startswith(os.path.join(home, ".cache", "janus-jax", "jax_cache"))
  assert first["hits"] == 0 and first["max_size"] == xla.CACHE_MAX_BYTES
  assert any(name.endswith("-cache") for name in os.listdir(first["directory"]))
  second = _cache_run(tmp_path)
  assert second["directory"] == first["directory"] and second["hits"] >= 1


def test_compilation_cache_directory_precedence_and_off_switch(tmp_path):
  mine = str(tmp_path / "mine")
  # An explicit directory, and the environment variable: used, and not bounded by us.
  assert _cache_run(tmp_path, mine)["directory"] == mine
  got = _cache_run(tmp_path, **{xla.CACHE_ENV: mine})
  assert got["directory"] == mine and got["hits"] >= 1 and got["max_size"] == -1
  # The user's own jax setting wins over both.
  theirs = str(tmp_path / "theirs")
  got = _cache_run(tmp_path, mine, JAX_COMPILATION_CACHE_DIR=theirs, **{xla.CACHE_ENV: mine})
  assert got["directory"] == theirs and os.path.isdir(theirs)
  # Empty: no cache, nothing written.
  for off in (_cache_run(tmp_path, ""), _cache_run(tmp_path, **{xla.CACHE_ENV: ""})):
    assert off == dict(directory=None, hits=0, max_size=-1)
  assert not os.path.exists(tmp_path / "home" / ".cache")
