"""Converted checkpoint directories: Orbax params + config.json + tokenizer files.

Layout of a directory written here:
  params/          Orbax (OCDBT) checkpoint of the Flax param tree
  config.json      our JanusConfig
  tokenizer.json, tokenizer_config.json, ...   copied from the source, when present

Writes are atomic: everything goes to a temporary sibling that is renamed into place
at the end, so an interrupted or failed write leaves no half-made directory behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Iterator, Mapping

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, SingleDeviceSharding

from janus_jax import sharding as sharding_lib
from janus_jax.config import JanusConfig
from janus_jax.errors import CheckpointError  # noqa: F401 - re-exported

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
# Files carried over from a source checkpoint (tokenizer, processor and generation settings).
SIDECAR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "processor_config.json", "preprocessor_config.json", "generation_config.json")


def _ocp():
  # Orbax's v1 API: partial saves let a converter write one parameter group at a time.
  import orbax.checkpoint.experimental.v1 as ocp1
  from orbax.checkpoint.experimental.v1 import partial
  return ocp1, partial


def is_converted(directory: str) -> bool:
  return (os.path.isfile(os.path.join(directory, CONFIG_FILE))
          and os.path.isdir(os.path.join(directory, PARAMS_DIR)))


@contextlib.contextmanager
def atomic_directory(dst: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary sibling of `dst` to fill; renames it to `dst` on success.

  Refuses an existing `dst` unless `overwrite`. On any exception the temporary
  directory is removed and `dst` is untouched.
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise CheckpointError(f"{dst} already exists; choose another destination or pass "
                          "--overwrite to replace it.")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(dst):
      old = f"{tmp}.old"
      os.rename(dst, old)
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


class ParamsWriter:
  """Writes a param tree into `<directory>/params` in pieces (bounded memory).

  `add(subtree)` saves a disjoint part of the tree (nested dicts of numpy or jax
  arrays) and releases it; `close()` finalises the checkpoint.
  """

  def __init__(self, directory: str):
    self.path = os.path.join(directory, PARAMS_DIR)
    self._written = 0

  def add(self, subtree: Mapping) -> int:
    ocp1, partial = _ocp()
    context = ocp1.Context()
    # Trained weights barely compress; zstd would cost more time than it saves space.
    context.array.saving.use_compression = False
    with context:
      partial.save(self.path, dict(subtree))
    size = sum(int(np.asarray(x).nbytes) if not isinstance(x, jax.Array) else x.nbytes
               for x in jax.tree.leaves(subtree))
    self._written += size
    return size

  def close(self) -> int:
    """Finalises the checkpoint; returns the number of parameter bytes written."""
    _, partial = _ocp()
    partial.finalize(self.path)
    return self._written


def copy_tokenizer_files(source_dir: str, directory: str) -> None:
  """Copies the tokenizer/processor files that exist in `source_dir`."""
  for name in SIDECAR_FILES:
    src = os.path.join(source_dir, name)
    if os.path.isfile(src):
      shutil.copyfile(src, os.path.join(directory, name))


def write_sidecars(directory: str, config: JanusConfig, source_dir: str | None = None) -> None:
  """config.json, plus the tokenizer/processor files found in `source_dir`."""
  config.to_json(os.path.join(directory, CONFIG_FILE))
  if source_dir is not None:
    copy_tokenizer_files(source_dir, directory)


def save(directory: str, params, config: JanusConfig, source_dir: str | None = None,
         overwrite: bool = False) -> None:
  """Saves a whole param tree with its config (and tokenizer files from `source_dir`)."""
  with atomic_directory(directory, overwrite) as tmp:
    writer = ParamsWriter(tmp)
    writer.add(jax.device_get(params))
    writer.close()
    write_sidecars(tmp, config, source_dir)


def save_part(directory: str, part: str, params, config: JanusConfig, history=(),
              overwrite: bool = False) -> None:
  """A checkpoint directory holding one part of a model ({part: params}, e.g. a VQ or an
  understanding encoder trained on its own) with the float32 config and, as
  metrics.jsonl, the training history (dicts), written atomically; `load_part` reads it."""
  stored = config.replace(dtype="float32", param_dtype="float32")
  with atomic_directory(directory, overwrite) as tmp:
    writer = ParamsWriter(tmp)
    writer.add({part: jax.device_get(params)})
    writer.close()
    write_sidecars(tmp, stored)
    with open(os.path.join(tmp, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in history)


def load_part(directory: str, part: str):
  """(JanusConfig, {part: float32 params}) of a converted checkpoint directory, reading only
  `part/...` (a 7B checkpoint's VQ costs the VQ's memory, not the whole model's)."""
  import orbax.checkpoint.experimental.v1 as ocp1
  from janus_jax.model import abstract_params
  config = read_config(directory)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = abstract_params(config)
  if part not in abstract:
    raise CheckpointError(f"a Janus model has no part {part!r}; choose one of {sorted(abstract)}.")
  target = {part: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, np.float32,
                                                              sharding=device), abstract[part])}
  context = ocp1.Context()
  context.pytree.loading.partial_load = True
  try:
    with context:
      params = ocp1.load(os.path.join(directory, PARAMS_DIR), target)
  except Exception as e:  # noqa: BLE001 - orbax raises several types for a bad directory
    raise CheckpointError(f"cannot read the {part} params of {directory}: {e}") from e
  return config, params


def read_config(directory: str) -> JanusConfig:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory} has no {CONFIG_FILE}; is it a converted checkpoint? "
                          "Convert PyTorch weights with `python -m convert SRC DST`.")
  return JanusConfig.from_json(path)


def restore_params(directory: str, config: JanusConfig | None = None, dtype=None,
                   mesh: Mesh | None = None, rules=sharding_lib.RULES):
  """Reads the params of a converted directory as jax arrays.

  dtype: cast every parameter (e.g. "bfloat16"); None keeps the stored dtype.
  mesh: place each parameter with its rule-given sharding; each device reads only its
  shard. Without a mesh everything goes to the default device.
  """
  from janus_jax.model import abstract_params, param_shardings
  ocp1, _ = _ocp()
  config = config or read_config(directory)
  shapes = flatten_dict(abstract_params(config))
  stored = _stored_metadata(os.path.join(directory, PARAMS_DIR))
  missing = sorted("/".join(k) for k in shapes if k not in stored)
  extra = sorted("/".join(k) for k in stored if k not in shapes)
  if missing or extra:
    raise CheckpointError(f"{directory}: params do not match config.json (missing "
                          f"{missing[:3]}, unexpected {extra[:3]}).")
  if mesh is not None:
    shardings = flatten_dict(param_shardings(config, mesh, rules))
  else:
    device = SingleDeviceSharding(jax.devices()[0])
    shardings = {k: device for k in shapes}
  target = {}
  for key, leaf in shapes.items():
    if tuple(stored[key].shape) != tuple(leaf.shape):
      raise CheckpointError(f"{directory}: parameter {'/'.join(key)} has shape "
                            f"{tuple(stored[key].shape)}, config.json implies {leaf.shape}.")
    want = np.dtype(dtype) if dtype is not None else stored[key].dtype
    target[key] = jax.ShapeDtypeStruct(leaf.shape, want, sharding=shardings[key])
  return ocp1.load(os.path.join(directory, PARAMS_DIR), unflatten_dict(target))


def _stored_metadata(path: str) -> dict:
  ocp1, _ = _ocp()
  try:
    meta = ocp1.metadata(path).metadata
  except Exception as e:  # noqa: BLE001 - orbax raises several types for a bad directory
    raise CheckpointError(f"cannot read the Orbax params at {path}: {e}") from e
  return flatten_dict(meta)
