"""Tensor sources over a PyTorch checkpoint directory, whatever its file format.

Handles one or several `*.safetensors` files (with or without
`model.safetensors.index.json`) and one or several `pytorch_model*.bin` files (with or
without `pytorch_model.bin.index.json`). Tensors are memory-mapped and read on demand;
`.bin` files go through a restricted unpickler, never through torch.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from janus_jax.errors import CheckpointError

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


class _SafetensorsFile:
  def __init__(self, path: str):
    from safetensors import safe_open
    self.path = path
    try:
      self._handle = safe_open(path, framework="numpy")
      self._keys = list(self._handle.keys())
      self._meta = {k: self._handle.get_slice(k) for k in self._keys}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
      raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file may be "
                            "truncated or corrupt: download it again.") from e

  def keys(self):
    return self._keys

  def shape(self, key):
    return tuple(self._meta[key].get_shape())

  def dtype(self, key) -> str:
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
            "I64": "int64", "I32": "int32", "BOOL": "bool"}.get(self._meta[key].get_dtype(),
                                                                 self._meta[key].get_dtype())

  def __call__(self, key):
    return _read(self.path, key, self._handle.get_tensor)


class _BinFile:
  def __init__(self, path: str):
    from convert.torch_pickle import TorchBinFile
    self.path = path
    try:
      self._file = TorchBinFile(path)
    except CheckpointError as e:
      raise CheckpointError(f"{e}; download the file again, or re-save the state dict with "
                            "torch.save (tensors only).") from e

  def keys(self):
    return list(self._file.keys())

  def shape(self, key):
    return tuple(self._file.shape(key))

  def dtype(self, key) -> str:
    return np.dtype(self._file.dtype(key)).name

  def __call__(self, key):
    return _read(self.path, key, self._file)

  def release_pages(self):
    self._file.release_pages()


def _read(path: str, key: str, get) -> np.ndarray:
  """get(key), with any failure to read the data (only noticed now, e.g. a corrupt
  compressed record or a file truncated after it was opened) as a CheckpointError."""
  try:
    return get(key)
  except CheckpointError as e:
    raise CheckpointError(f"{e} (while reading tensor {key!r}); the file may be truncated or "
                          "corrupt: download it again.") from e
  except Exception as e:  # noqa: BLE001 - zlib, zipfile, safetensors and OS errors alike
    raise CheckpointError(f"{path}: cannot read tensor {key!r} ({type(e).__name__}: {e}); the "
                          "file may be truncated or corrupt: download it again.") from e


class TensorSource:
  """All tensors of a checkpoint directory: keys(), shape(k), dtype(k), and source(k) -> array."""

  def __init__(self, directory: str, files: Iterable[str] | None = None):
    self.directory = directory
    self.files = list(files) if files is not None else find_weight_files(directory)
    self._where: dict[str, object] = {}
    for path in self.files:
      handle = (_SafetensorsFile if path.endswith(".safetensors") else _BinFile)(path)
      for key in handle.keys():
        if key in self._where:
          raise CheckpointError(f"tensor {key!r} appears in both "
                                f"{os.path.basename(self._where[key].path)} and "
                                f"{os.path.basename(path)}.")
        self._where[key] = handle
    self._check_index()

  def _check_index(self):
    index = _index_path(self.directory)
    if index is None:
      return
    for key, name in _read_index(index).items():
      handle = self._where.get(key)
      if handle is None or os.path.basename(handle.path) != os.path.basename(name):
        raise CheckpointError(f"{os.path.basename(index)} places {key!r} in {name}, but that "
                              "file does not hold it; the index and the shards disagree.")

  @property
  def size_bytes(self) -> int:
    return sum(os.path.getsize(f) for f in self.files)

  def keys(self):
    return self._where.keys()

  def file_of(self, key) -> str:
    """The path of the file holding tensor `key`."""
    return self._where[key].path

  def shape(self, key):
    return self._where[key].shape(key)

  def dtype(self, key) -> str:
    return self._where[key].dtype(key)

  def __call__(self, key) -> np.ndarray:
    return self._where[key](key)

  def release_pages(self) -> None:
    """Lets go of memory-mapped pages read so far (call between parameters)."""
    for handle in {id(h): h for h in self._where.values()}.values():
      if hasattr(handle, "release_pages"):
        handle.release_pages()


def _index_path(directory: str) -> str | None:
  for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def _read_index(path: str) -> dict[str, str]:
  from convert.torch_pickle import read_index
  try:
    return read_index(path)
  except CheckpointError as e:
    raise CheckpointError(f"{e}; every shard in 'weight_map' must be a file next to the index "
                          "(restore the index that came with the checkpoint).") from e


def find_weight_files(directory: str) -> list[str]:
  """The weight files of a checkpoint directory (safetensors preferred over .bin)."""
  if not os.path.exists(directory):
    raise CheckpointError(f"{directory} does not exist; pass the checkpoint folder that "
                          "holds config.json and the weight files.")
  if not os.path.isdir(directory):
    raise CheckpointError(f"{directory} is not a directory; pass the checkpoint folder that "
                          "holds config.json and the weight files.")
  index = _index_path(directory)
  if index is not None:
    names = sorted(set(_read_index(index).values()))
    return [os.path.join(directory, n) for n in names]
  entries = sorted(os.listdir(directory))
  safetensors = [e for e in entries if e.endswith(".safetensors")]
  bins = [e for e in entries if e.endswith(".bin") and e.startswith("pytorch_model")]
  chosen = safetensors or bins
  if not chosen:
    raise CheckpointError(f"{directory} holds no weights (*.safetensors or pytorch_model*.bin); "
                          "is this the right folder?")
  return [os.path.join(directory, e) for e in chosen]
