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

The command-line tools also turn on jax's persistent compilation cache
(`use_compilation_cache`), so a rerun or a resumed run loads its programs instead of
compiling them again.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform as platform_lib

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


def compiler_options(platform: str | None = None, decode: bool = False,
                     once: bool = False) -> dict:
  """Options for compiling a janus_jax program for `platform` (default: jax's default
  backend); decode: it is a sampling loop (prefill + token steps); once: it runs once (a
  random init), so on the CPU it skips LLVM's optimisations, most of its compile time (the
  demo VQ's init: 4.5 -> 1.7 s on a 2-core host; it then runs in 0.03 s). Empty off the
  CPU; no YNNPACK option when XLA_FLAGS already sets it."""
  if (platform or jax.default_backend()) != "cpu":
    return {}
  options = {"xla_backend_optimization_level": 0} if once else {}
  if YNN_OPTION in os.environ.get("XLA_FLAGS", "") or ynnpack_enabled(decode):
    return options
  return options | {YNN_OPTION: ""}


def _under_trace() -> bool:
  """Whether the caller is being traced (inside jax.jit, jax.eval_shape, ...): there a
  new array is a tracer."""
  return isinstance(jax.numpy.zeros(()), jax.core.Tracer)


def jit(fun, platform: str | None = None, once: bool = False, **kwargs):
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options(platform)` (call it where the
  program is built, not at import: it asks jax for its default backend).

  jax accepts compiler options only on a top-level jit, so called inside a user's own
  trace (e.g. `jax.eval_shape(lambda: janus_jax.init_params(cfg, key))`) the function is
  staged as a plain nested jit and compiled with the outer program's options.
  `.lower(...)` lowers the top-level form. once: see `compiler_options`.
  """
  options = compiler_options(platform, once=once)
  top = jax.jit(fun, compiler_options=options or None, **kwargs)
  if not options:
    return top
  nested = jax.jit(fun, **kwargs)

  @functools.wraps(fun)
  def call(*args, **kw):
    return (nested if _under_trace() else top)(*args, **kw)

  call.lower = top.lower
  return call


# --- the persistent compilation cache ------------------------------------------------------
CACHE_ENV = "JANUS_JAX_COMPILATION_CACHE"   # a directory; empty: no cache
CACHE_MAX_BYTES = 4 << 30                    # the default directory's bound (LRU eviction)
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def _host_id() -> str:
  """A short hash of this machine's CPU model and instruction-set flags."""
  text = platform_lib.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      text += "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
  except OSError:
    text += platform_lib.processor()
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_cache_dir() -> str:
  """~/.cache/janus-jax/jax_cache/<cpu>/: one directory per kind of CPU. XLA:CPU builds a
  program for the instruction set of the CPU it compiles on, and jax's cache key does not
  record it, so hosts with different CPUs sharing a home directory must not share entries."""
  return os.path.join(os.path.expanduser("~"), ".cache", "janus-jax", "jax_cache", _host_id())


def use_compilation_cache(directory: str | None = None) -> str | None:
  """Turns on jax's persistent compilation cache for this process; returns its directory
  (None: off). Programs that take a second or more to compile are then written there and
  loaded, not compiled, by the next process that builds the same program with the same
  options: a rerun of the demo, a resumed training run, a second `generate` on the same
  checkpoint (its token loops report progress through a host callback, and jax keeps no
  program with one, so there only the VQ decoder and the encoders are loaded).

  Which directory: a jax setting the user made (JAX_COMPILATION_CACHE_DIR, or
  `jax.config.update("jax_compilation_cache_dir", ...)`) is kept as it is; else
  `directory`, else $JANUS_JAX_COMPILATION_CACHE, else `default_cache_dir()` (bounded to
  CACHE_MAX_BYTES, least recently used entries evicted). An empty string turns it off.
  Only process 0 of a multi-process job writes entries (jax's rule): give a pod a shared
  directory (e.g. a gs:// path) for its other processes to read them.
  """
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  if directory is None:
    directory = os.environ.get(CACHE_ENV)
  if directory is None:
    directory = default_cache_dir()
    if jax.config.jax_compilation_cache_max_size == -1:   # jax's default: unbounded
      jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  if not directory:
    return None
  if "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
  jax.config.update("jax_compilation_cache_dir", directory)
  # jax decides once per process, at its first compile, whether it uses a cache: let it
  # decide again now that there is one.
  from jax.experimental.compilation_cache import compilation_cache
  compilation_cache.reset_cache()
  return directory


@contextlib.contextmanager
def counting_cache_hits():
  """Counts the programs loaded from the persistent compilation cache inside the block:
  `with counting_cache_hits() as hits: ...`, then `hits[0]`."""
  hits = [0]

  def listener(event: str, **kwargs):
    if event == _CACHE_HIT:
      hits[0] += 1

  jax.monitoring.register_event_listener(listener)
  try:
    yield hits
  finally:
    jax.monitoring.unregister_event_listener(listener)
