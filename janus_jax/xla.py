"""The XLA compiler options janus_jax compiles its programs with.

One choice lives here: on the CPU backend, whether XLA:CPU hands matrix products and
convolutions to YNNPACK (its default in jax 0.10) or keeps them in its own (Eigen / oneDNN)
kernels. Measured on two 2-core hosts, medians of 5 (YNNPACK / Eigen time):
`python experiments/bench_xla_options.py [--demo-workdir DIR]`

                                               AMD Zen 3 (AVX2)   Intel Xeon (AVX-512,
                                                                  AMX; model masked)
  demo VQ training step                          1.84               1.38
  demo Stage II training step                    1.15               1.12 (--quick's config)
  mid-size image decode, batch 1 (2 CFG rows)    0.62               0.61
  mid-size image decode, batch 8 (16 CFG rows)   0.81               0.87

The decode loops' products are written weight-major (`llm.matmul`); with the plain x · w
form (before), Eigen had won batch 8 on the Zen 3 (1.24) and YNNPACK only batch 1 (0.87).

So CPU programs are compiled without YNNPACK, except the decode loops (`decode=True`). (The
earliest sessions' figures, on an AMD Zen 4 with AVX-512, were taken with YNNPACK everywhere;
that host was never measured both ways.) Set `YNNPACK` to force either way; a user's own
`--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS always wins.

Every program janus_jax compiles takes `compiler_options()`: pass it to `jax.jit(...,
compiler_options=...)` (`jit` below) or to `.lower(...).compile(...)`.
"""
from __future__ import annotations

import functools
import os

import jax

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNNPACK: bool | None = None   # None: only in decode loops


@functools.lru_cache(maxsize=None)
def cpu_has_avx512() -> bool:
  """Whether this CPU has AVX-512 (Linux /proc/cpuinfo; True where it cannot be read).
  Not part of the choice; benchmarks record it to describe the host."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return "avx512f" in line.split()
  except OSError:
    pass
  return True


def ynnpack_enabled(decode: bool = False) -> bool:
  """Whether a CPU program keeps YNNPACK's fusions: YNNPACK if set, else whether it is a
  token-decoding loop."""
  if YNNPACK is not None:
    return YNNPACK
  return decode


def compiler_options(platform: str | None = None, decode: bool = False) -> dict:
  """Options for compiling a janus_jax program for `platform` (default: jax's default
  backend); decode: it is a sampling loop (prefill + token steps). Empty off the CPU, or
  when XLA_FLAGS already sets the YNNPACK option."""
  if (platform or jax.default_backend()) != "cpu":
    return {}
  if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return {}
  return {} if ynnpack_enabled(decode) else {YNN_OPTION: ""}


def _under_trace() -> bool:
  """Whether the caller is being traced (inside jax.jit, jax.eval_shape, ...): there a
  new array is a tracer."""
  return isinstance(jax.numpy.zeros(()), jax.core.Tracer)


def jit(fun, platform: str | None = None, **kwargs):
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options(platform)` (call it where the
  program is built, not at import: it asks jax for its default backend).

  jax accepts compiler options only on a top-level jit, so called inside a user's own
  trace (e.g. `jax.eval_shape(lambda: janus_jax.init_params(cfg, key))`) the function is
  staged as a plain nested jit and compiled with the outer program's options.
  `.lower(...)` lowers the top-level form.
  """
  options = compiler_options(platform)
  top = jax.jit(fun, compiler_options=options or None, **kwargs)
  if not options:
    return top
  nested = jax.jit(fun, **kwargs)

  @functools.wraps(fun)
  def call(*args, **kw):
    return (nested if _under_trace() else top)(*args, **kw)

  call.lower = top.lower
  return call
