"""python -m convert.export SRC DST --layout hf|deepseek [--dtype ...] [--overwrite]

Writes a converted (Orbax) checkpoint back out as PyTorch-loadable safetensors, in the
transformers layout (`JanusForConditionalGeneration.from_pretrained` loads it) or the
original DeepSeek layout, sharded at 5 GB with an index, plus a matching config.json
and the tokenizer files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from convert import mapping
from convert.cli import run

SHARD_BYTES = 5 * 10**9


def export_tensors(params, config, layout: str) -> dict[str, np.ndarray]:
  """Flax params -> {PyTorch key: contiguous array} in the requested layout."""
  from flax.traverse_util import flatten_dict
  from convert.deepseek import hf_tensors_to_deepseek
  flat = {k: np.asarray(v) for k, v in flatten_dict(params).items()}
  rules = mapping.hf_rules(flat)
  mapping.check_rules_cover(rules, flat)
  tensors = mapping.export_tensors(rules, flat)
  if layout == "deepseek":
    tensors = hf_tensors_to_deepseek(tensors)
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def write_safetensors(tensors: dict[str, np.ndarray], directory: str,
                      shard_bytes: int = SHARD_BYTES) -> list[str]:
  """Writes `model.safetensors`, or `model-0000i-of-0000n.safetensors` + index when large."""
  from safetensors.numpy import save_file
  shards, current, size = [], {}, 0
  for key in sorted(tensors):
    nbytes = tensors[key].nbytes
    if current and size + nbytes > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[key] = tensors[key]
    size += nbytes
  shards.append(current)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return ["model.safetensors"]
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in shard})
  total = sum(t.nbytes for t in tensors.values())
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names


def export(src: str, dst: str, layout: str, dtype: str | None = None, overwrite: bool = False,
           shard_bytes: int = SHARD_BYTES) -> dict:
  from janus_jax import checkpoint
  from convert.deepseek import deepseek_config_dict
  from convert.hf import hf_config_dict
  if layout not in ("hf", "deepseek"):
    raise checkpoint.CheckpointError(f"--layout {layout!r}: choose hf or deepseek.")
  if os.path.lexists(dst) and not overwrite:   # refuse before reading anything
    raise checkpoint.CheckpointError(f"{os.path.abspath(dst)} already exists; choose another "
                                     "destination or pass --overwrite to replace it.")
  try:
    config = checkpoint.read_config(src)
  except checkpoint.CheckpointError:
    raise
  except (KeyError, TypeError, ValueError) as e:   # not JSON, or not our JanusConfig
    raise checkpoint.CheckpointError(
        f"{os.path.join(src, checkpoint.CONFIG_FILE)}: not a valid converted config ({e}); "
        "reconvert the checkpoint with `python -m convert`.") from e
  if dtype is not None:
    config = config.replace(param_dtype=dtype)
  try:
    config_dict = hf_config_dict(config) if layout == "hf" else deepseek_config_dict(config)
  except ValueError as e:
    raise checkpoint.CheckpointError(str(e)) from None
  try:
    params = checkpoint.restore_params(src, config, dtype)
  except (checkpoint.CheckpointError, OSError):
    raise
  except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged data
    raise checkpoint.CheckpointError(
        f"cannot read the params at {os.path.join(src, checkpoint.PARAMS_DIR)} "
        f"({type(e).__name__}: {e}); reconvert the checkpoint with `python -m convert`.") from e
  tensors = export_tensors(params, config, layout)
  del params
  with checkpoint.atomic_directory(dst, overwrite) as tmp:
    files = write_safetensors(tensors, tmp, shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config_dict, f, indent=2)
    checkpoint.copy_tokenizer_files(src, tmp)
  return dict(destination=dst, layout=layout, tensors=len(tensors), files=files,
              bytes=sum(t.nbytes for t in tensors.values()))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m convert.export",
                                   description=__doc__.split("\n\n")[1])
  parser.add_argument("src", help="converted checkpoint directory")
  parser.add_argument("dst", help="output directory")
  parser.add_argument("--layout", required=True, choices=["hf", "deepseek"])
  parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                      help="cast the tensors (default: keep the stored dtype)")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)

  def job():
    s = export(args.src, args.dst, args.layout, args.dtype, args.overwrite)
    return (f"wrote {s['destination']}: {s['tensors']} tensors in {len(s['files'])} safetensors "
            f"file(s), {s['bytes'] / 1e6:,.1f} MB, {s['layout']} layout")
  return run(job)


if __name__ == "__main__":
  sys.exit(main())
