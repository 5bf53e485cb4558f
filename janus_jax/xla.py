"""The XLA compiler options janus_jax compiles its programs with.

One choice lives here: on the CPU backend, whether XLA:CPU hands matrix products and
convolutions to YNNPACK (its default in jax 0.10) or keeps them in its own (Eigen / oneDNN)
kernels. Measured on a 2-core AMD EPYC without AVX-512 (Zen 3, AVX2), medians of 5,
`python experiments/bench_xla_options.py --demo-workdir DIR` (YNNPACK / Eigen time):

  demo VQ training step                          1.84  (1060 -> 576 ms)
  demo Stage II training step                    1.15  (704 -> 614 ms)
  mid-size image decode, batch 1 (2 CFG rows)    0.62  (144 tokens per call)
  mid-size image decode, batch 8 (16 CFG rows)   0.81

The decode loops' products are written weight-major (`llm.matmul`); with the plain x · w
form (before), Eigen had won batch 8 (1.24) and YNNPACK only batch 1 (0.87).

So without AVX-512, programs are compiled without YNNPACK, except the decode loops
(`decode=True`). On AVX-512 machines YNNPACK stays on everywhere (the figures of earlier
sessions, on a Zen 4, were taken with it). Set `YNNPACK` to force either way; a user's own
`--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS always wins.

Every program janus_jax compiles takes `compiler_options()`: pass it to `jax.jit(...,
compiler_options=...)` (`jit` below) or to `.lower(...).compile(...)`.
"""
from __future__ import annotations

import functools
import os

import jax

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNNPACK: bool | None = None   # None: decide by the CPU (off without AVX-512)


@functools.lru_cache(maxsize=None)
def cpu_has_avx512() -> bool:
  """Whether this CPU has AVX-512 (Linux /proc/cpuinfo; True where it cannot be read, so
  an unknown machine keeps XLA's defaults)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return "avx512f" in line.split()
  except OSError:
    pass
  return True


def ynnpack_enabled(decode: bool = False) -> bool:
  """Whether a CPU program keeps YNNPACK's fusions: YNNPACK if set, else by the CPU and,
  without AVX-512, whether it is a token-decoding loop."""
  if YNNPACK is not None:
    return YNNPACK
  return cpu_has_avx512() or decode


def compiler_options(platform: str | None = None, decode: bool = False) -> dict:
  """Options for compiling a janus_jax program for `platform` (default: jax's default
  backend); decode: it is a sampling loop (prefill + token steps). Empty off the CPU, or
  when XLA_FLAGS already sets the YNNPACK option."""
  if (platform or jax.default_backend()) != "cpu":
    return {}
  if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return {}
  return {} if ynnpack_enabled(decode) else {YNN_OPTION: ""}


def jit(fun, platform: str | None = None, **kwargs):
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options(platform)` (call it where the
  program is built, not at import: it asks jax for its default backend)."""
  return jax.jit(fun, compiler_options=compiler_options(platform) or None, **kwargs)
