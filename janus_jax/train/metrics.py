"""Throughput accounting (model FLOPs, peak FLOP/s, MFU) and the metric writers.

Model FLOPs are counted analytically from the config and the batch shape (not from
XLA's cost analysis, which counts a `scan`/`while` body once rather than per layer):
2·(multiply-adds) of every matmul in the forward pass, plus the backward matmuls the
step really needs — the activation gradient of a layer only when some parameter below
it trains, the weight gradient only when the layer itself trains. So a fully trained
layer costs 3× its forward (the usual 6·N per token), a frozen layer under trainable
adaptors 2×, a frozen encoder with nothing trainable below it 1×. Rematerialisation is
not counted (MFU, not hardware utilisation). Attention scores are counted over all T
keys per query, as the masked dense attention computes them.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from janus_jax.config import JanusConfig

# Dense bfloat16 peak FLOP/s per chip (as jax.devices() lists them), from the vendor's
# published figures.
TPU_PEAK_FLOPS = {
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v4 lite": 137.5e12,
    "TPU v5 lite": 197e12,      # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,           # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,      # v6e (Trillium)
    "TPU v6e": 918e12,
}

_measured_cpu_peak: dict[str, float] = {}


def measure_cpu_peak(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one large jitted matmul on the first device, best of `repeats`.

  On CPU the simulated devices share the host's cores, so this is the peak of the whole
  host, whatever the device count. Measured once per process and dtype.
  """
  if dtype in _measured_cpu_peak:
    return _measured_cpu_peak[dtype]
  import jax
  import jax.numpy as jnp
  a = jax.device_put(np.random.default_rng(0).standard_normal((size, size), np.float32),
                     jax.devices()[0]).astype(dtype)
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  _measured_cpu_peak[dtype] = 2 * size ** 3 / best
  return _measured_cpu_peak[dtype]


def peak_flops(devices, compute_dtype: str = "float32") -> tuple[float, str]:
  """(peak FLOP/s of all `devices` together, how it was obtained)."""
  kind = devices[0].device_kind
  if devices[0].platform == "tpu":
    for name in sorted(TPU_PEAK_FLOPS, key=len, reverse=True):
      if kind.lower().startswith(name.lower()):
        return TPU_PEAK_FLOPS[name] * len(devices), f"{name} bf16 peak x {len(devices)} chips"
    return float("nan"), f"unknown TPU kind {kind!r}"
  if devices[0].platform == "cpu":
    return measure_cpu_peak(compute_dtype), f"measured {compute_dtype} matmul on this host"
  return float("nan"), f"no peak known for {kind!r}"


# --- model FLOPs -----------------------------------------------------------------------------
def _groups_trainable(mask) -> dict[str, bool]:
  from flax.traverse_util import flatten_dict
  flat = flatten_dict(mask)
  any_under = lambda *prefix: any(v for k, v in flat.items() if k[:len(prefix)] == prefix)
  return {
      "vision": any_under("vision"), "aligner": any_under("aligner"),
      "gen_embed": any_under("gen_embed"), "gen_aligner": any_under("gen_aligner"),
      "embed": any_under("llm", "embed"), "layers": any_under("llm", "layers"),
      "final_norm": any_under("llm", "final_norm"),
      "lm_head": any_under("llm", "lm_head"), "gen_head": any_under("gen_head"),
  }


def train_flops(config: JanusConfig, mask, batch: int, seq_len: int, images_per_row: int,
                grad_accum_steps: int = 1) -> float:
  """Model FLOPs of one train step over a [batch, seq_len] batch (see the module doc)."""
  del grad_accum_steps   # micro-batching changes memory, not FLOPs
  t = _groups_trainable(mask)
  llm, vis = config.llm, config.vision
  d, tokens = llm.hidden_size, batch * seq_len
  patches = batch * images_per_row * vis.num_patches
  # Forward FLOPs of each group (2 x multiply-adds).
  layer = (d * llm.num_heads * llm.head_dim + 2 * d * llm.num_kv_heads * llm.head_dim
           + llm.num_heads * llm.head_dim * d + 3 * d * llm.intermediate_size)
  fwd = {
      "vision": 2 * patches * (vis.patch_size ** 2 * 3 * vis.width
                               + vis.num_layers * (4 * vis.width ** 2 + 2 * vis.width * vis.mlp_dim
                                                   + 2 * vis.num_patches * vis.width)),
      "aligner": 2 * patches * (vis.width * d + d * d),
      "gen_aligner": 2 * tokens * (config.vq.codebook_dim * d + d * d),
      "layers": 2 * tokens * llm.num_layers * (layer + 2 * seq_len * llm.num_heads * llm.head_dim),
      "lm_head": 2 * tokens * d * llm.vocab_size,
      "gen_head": 2 * tokens * (d * config.gen_head_dim
                                + config.gen_head_dim * config.vq.codebook_size),
  }
  # What lies below each group (whose training needs the activation gradient through it).
  # The layer stacks count themselves: layer i passes gradients down to trained layer i-1.
  below = {
      "vision": ["vision"], "aligner": ["vision"], "gen_aligner": ["gen_embed"],
      "layers": ["vision", "aligner", "gen_embed", "gen_aligner", "embed", "layers"],
  }
  below["lm_head"] = below["gen_head"] = below["layers"] + ["final_norm"]
  total = 0.0
  for group, flops in fwd.items():
    factor = 1 + any(t[g] for g in below[group]) + t[group]
    total += factor * flops
  return float(total)


# --- writers ---------------------------------------------------------------------------------
class MetricWriter:
  """Scalars to stdout, TensorBoard event files (tensorboardX) and metrics.jsonl.

  Only process 0 writes; the others are silent.
  """

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_torn_last_line(path)
    self._jsonl = open(path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        print("warning: tensorboardX is not installed; no TensorBoard event files "
              "(pip install -r requirements.txt).", file=sys.stderr)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)
      self._tb.flush()
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def _drop_torn_last_line(path: str) -> None:
  """A run killed mid-write leaves half a line: cut it so the file stays valid JSONL."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def format_line(step: int, total: int, s: dict[str, float]) -> str:
  """One stdout line per logging step."""
  kinds = " ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in s.items()
                   if k.startswith("loss/") and not np.isnan(v))
  mfu = s.get("mfu", float("nan"))
  return (f"step {step}/{total} | loss {s['loss']:.4f} ({kinds}) | grad_norm "
          f"{s['grad_norm']:.3g} | lr {s['learning_rate']:.3g} | {s['tokens_per_second']:,.0f} "
          f"tok/s | {s['step_time']:.3f} s/step | MFU {100 * mfu:.1f}%")
