"""Reading `torch.save` checkpoints (`pytorch_model*.bin`, `*.pt`) without torch.

A torch>=1.6 checkpoint is a zip archive: `<archive>/data.pkl` (a pickle of the state
dict), one uncompressed record `<archive>/data/<key>` per storage (raw little-endian
elements, 64-byte aligned), plus `byteorder` and `version`. Unpickling normally runs
arbitrary code (`__reduce__`), so `TorchBinFile` uses an unpickler that resolves only
the handful of globals a state dict needs and turns tensors into lazy records; the
data is read only when a tensor is asked for, as a zero-copy read-only memory map.
"""
from __future__ import annotations

import collections
import json
import mmap
import os
import pickle
import struct
import zipfile
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from janus_jax.errors import CheckpointError  # noqa: F401 - re-exported


# Legacy typed-storage classes (`torch.FloatStorage`, ...): the class names the element dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128}
# `torch.<dtype>` objects; torch.save writes them (with `_rebuild_tensor_v3` over an
# UntypedStorage of bytes) for dtypes that have no typed-storage class (uint16, float8...).
_TORCH_DTYPES = {
    "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "uint16": np.uint16,
    "uint32": np.uint32, "uint64": np.uint64, "complex64": np.complex64,
    "complex128": np.complex128, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2}
# Wrappers around a state dict tried in this order (LlamaGen's VQ checkpoint uses "model").
WRAPPER_KEYS = ("state_dict", "model", "module")


# Markers returned by `find_class`. Tuples are neither callable nor accept BUILD state, so a
# pickle can only pass them around as data.
class _StorageType(NamedTuple):
  dtype: np.dtype | None      # None: torch.storage.UntypedStorage (bytes)


class _DType(NamedTuple):
  dtype: np.dtype


class _Storage(NamedTuple):
  member: str                 # zip member name of the data record
  dtype: np.dtype | None
  nbytes: int                 # uncompressed size of the record


class TensorRecord(NamedTuple):
  """Where one tensor lives: element `i` (multi-index) is at storage element offset + i . stride."""
  member: str
  dtype: np.dtype
  shape: tuple[int, ...]
  stride: tuple[int, ...]     # in elements, as torch
  offset: int                 # storage offset, in elements


class _Unpickler(pickle.Unpickler):
  """Resolves only tensor-rebuilding globals; maps storages to zip records; runs no other code."""

  def __init__(self, file, path: str, zf: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._path, self._zf, self._prefix = path, zf, prefix

  def _error(self, msg: str) -> CheckpointError:
    return CheckpointError(f"{self._path}: {msg}")

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict      # the state dict itself and empty backward hooks
    if module == "torch._utils":
      fn = {"_rebuild_tensor_v2": self._rebuild_v2, "_rebuild_tensor": self._rebuild_v2,
            "_rebuild_tensor_v3": self._rebuild_v3, "_rebuild_parameter": self._parameter}.get(name)
      if fn is not None:
        return fn
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
    if module == "torch" and name in _TORCH_DTYPES:
      return _DType(np.dtype(_TORCH_DTYPES[name]))
    if (module, name) == ("torch.storage", "UntypedStorage"):
      return _StorageType(None)
    if module == "torch" and (name.endswith("Storage") or name in ("float8_e4m3fnuz", "complex32")):
      raise self._error(f"unsupported tensor dtype 'torch.{name}'")
    raise self._error(
        f"refuses to unpickle '{module}.{name}' — only tensor rebuilding is allowed; "
        "the file may be malicious or not a PyTorch state dict")

  def persistent_load(self, pid: Any) -> _Storage:
    # torch.save writes ('storage', storage_type, key, location, numel) per storage.
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise self._error(f"unexpected persistent id {str(pid)[:80]!r}")
    member = f"{self._prefix}/data/{pid[2]}"
    try:
      info = self._zf.getinfo(member)
    except KeyError:
      raise self._error(f"missing data record '{member}'") from None
    return _Storage(member, pid[1].dtype, info.file_size)

  def _rebuild_v2(self, storage, offset, shape, stride, *_unused) -> TensorRecord:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    return self._record(storage, offset, shape, stride, None)

  def _rebuild_v3(self, storage, offset, shape, stride, _grad, _hooks, dtype, *_unused):
    if not isinstance(dtype, _DType):
      raise self._error(f"bad dtype argument {str(dtype)[:40]!r}")
    return self._record(storage, offset, shape, stride, dtype.dtype)

  def _parameter(self, data, *_unused) -> TensorRecord:
    if not isinstance(data, TensorRecord):
      raise self._error("nn.Parameter whose data is not a tensor")
    return data

  def _record(self, storage, offset, shape, stride, dtype) -> TensorRecord:
    if not isinstance(storage, _Storage):
      raise self._error("tensor without a storage record")
    dtype = dtype if dtype is not None else storage.dtype
    if dtype is None or (storage.dtype is not None and storage.dtype != dtype):
      raise self._error(f"tensor dtype does not match its storage '{storage.member}'")
    ints = lambda v: isinstance(v, tuple) and all(type(x) is int and x >= 0 for x in v)
    if not (type(offset) is int and offset >= 0 and ints(shape) and ints(stride)
            and len(shape) == len(stride)):
      raise self._error(f"bad tensor geometry in '{storage.member}'")
    # Elements spanned from the storage start; a shorter record means truncation/corruption.
    need = 0 if 0 in shape else offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    if need * dtype.itemsize > storage.nbytes:
      raise self._error(f"data record '{storage.member}' holds {storage.nbytes} bytes, a tensor "
                        f"needs {need * dtype.itemsize}: file truncated or corrupt")
    return TensorRecord(storage.member, dtype, shape, stride, offset)


def _problem(obj: Any) -> str | None:
  """Why `obj` is not a dict of name -> tensor (None if it is)."""
  if not isinstance(obj, dict):
    return f"a {type(obj).__name__}"
  for k, v in obj.items():
    if not isinstance(k, str) or not isinstance(v, TensorRecord):
      return f"a dict whose entry {str(k)[:60]!r} is a {type(v).__name__}, not a tensor"
  return None


def state_dict_of(obj: Any, key: str | None = None) -> dict[str, TensorRecord]:
  """The state dict in an unpickled checkpoint: `obj` itself, `obj[key]`, or the first of
  `obj["state_dict"|"model"|"module"]` that is a dict of tensors. Raises ValueError."""
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      raise ValueError(f"top-level object has no entry {key!r}")
    candidates = [obj[key]]
  else:
    candidates = [obj] + [obj[k] for k in WRAPPER_KEYS if isinstance(obj, dict) and k in obj]
  for c in candidates:
    if _problem(c) is None:
      return c
  raise ValueError(f"top-level object is {_problem(candidates[-1])}; expected a dict of name -> "
                   f"tensor, possibly wrapped as {{{'|'.join(map(repr, WRAPPER_KEYS))}: ...}}")


class TorchBinFile:
  """Lazy, read-only tensors of one torch.save file (e.g. `pytorch_model-00001-of-00002.bin`).

  `f.keys()` names; `f.shape(k)`, `f.dtype(k)` (numpy; bf16 is `ml_dtypes.bfloat16`);
  `f(k)` -> np.ndarray of that shape/dtype, a read-only view of the memory-mapped file
  (strided like torch's tensor, so views of shared storages cost nothing; pages are read
  on first touch). `key` selects a wrapper entry (e.g. "ema"); by default see `state_dict_of`.
  """

  def __init__(self, path: str | os.PathLike, key: str | None = None):
    self.path = os.fspath(path)
    self._zip = self._file = self._mmap = None
    try:
      self._open(key)
    except BaseException:
      self.close()
      raise

  def _open(self, key: str | None) -> None:
    path = self.path
    try:
      self._zip = zipfile.ZipFile(path)
      pkls = [n for n in self._zip.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
      if len(pkls) != 1:
        raise CheckpointError(f"{path}: expected one '<archive>/data.pkl', found {len(pkls)}; "
                              "not a torch.save file")
      prefix = pkls[0][:-len("/data.pkl")]
      if f"{prefix}/byteorder" in self._zip.namelist():
        order = self._zip.read(f"{prefix}/byteorder").decode(errors="replace")
        if order != "little":
          raise CheckpointError(f"{path}: byte order '{order}' is not supported (little only)")
      with self._zip.open(pkls[0]) as f:
        obj = _Unpickler(f, path, self._zip, prefix).load()
      self._tensors = state_dict_of(obj, key)
      self._file = open(path, "rb")
    except (CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError):
      raise
    except zipfile.BadZipFile as e:
      raise CheckpointError(f"{path}: not a zip archive or truncated ({e}); expected a "
                            "torch.save file (torch>=1.6 format)") from e
    except Exception as e:  # malformed pickle, wrong wrapper, zip structures out of range
      raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from e
    size = os.fstat(self._file.fileno()).st_size
    self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
    # Absolute file offset of each STORED record's data, read from its local header
    # (its extra field, which torch uses for alignment, may differ from the central one).
    self._start: dict[str, int] = {}
    for member in sorted({t.member for t in self._tensors.values()}):
      info = self._zip.getinfo(member)
      if info.compress_type != zipfile.ZIP_STORED:
        continue
      header = self._mmap[info.header_offset:info.header_offset + 30]
      if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: bad zip header for '{member}': file corrupt")
      name_len, extra_len = struct.unpack("<HH", header[26:30])
      start = info.header_offset + 30 + name_len + extra_len
      if start + info.file_size > size:
        raise CheckpointError(f"{path}: data record '{member}' runs past the end of the file "
                              f"({size} bytes): file truncated")
      self._start[member] = start

  def keys(self):
    return self._tensors.keys()

  def shape(self, name: str) -> tuple[int, ...]:
    return self._tensors[name].shape

  def dtype(self, name: str) -> np.dtype:
    return self._tensors[name].dtype

  def __call__(self, name: str) -> np.ndarray:
    """Tensor `name` as a read-only np.ndarray (copy with np.array(...) to own/write it)."""
    t = self._tensors[name]
    if 0 in t.shape:
      return np.zeros(t.shape, t.dtype)
    if t.member in self._start:               # zero copy over the memory map
      buffer, base = self._mmap, self._start[t.member]
    else:                                     # compressed record: decompress it whole
      try:
        buffer, base = self._zip.read(t.member), 0
      except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{self.path}: cannot read '{t.member}': {e}") from e
    size = t.dtype.itemsize
    return np.ndarray(t.shape, t.dtype, buffer=buffer, offset=base + t.offset * size,
                      strides=tuple(s * size for s in t.stride))

  def release_pages(self) -> None:
    """Drops the mapped pages from this process' resident memory (they stay in the page
    cache and are re-read on the next access), so streaming a large file keeps RSS flat."""
    if self._mmap is not None and hasattr(mmap, "MADV_DONTNEED"):
      self._mmap.madvise(mmap.MADV_DONTNEED)

  def close(self) -> None:
    try:
      if self._mmap is not None:
        self._mmap.close()
    except BufferError:  # arrays still view the map; it is released with the last of them
      pass
    for f in (self._zip, self._file):
      if f is not None:
        f.close()

  def __enter__(self) -> "TorchBinFile":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_index(path: str | os.PathLike) -> dict[str, str]:
  """`weight_map` (tensor name -> shard file name relative to the index's directory) of a
  `*.bin.index.json` / `*.safetensors.index.json`. Every shard must be an existing file
  inside that directory: absolute names and `..` escapes are refused, so a crafted index
  cannot make us open files elsewhere. The check is lexical, not `realpath`: in a Hugging
  Face cache every shard is a symlink into `../../blobs/`, which must stay allowed."""
  path = os.fspath(path)
  try:
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not a checkpoint index with a 'weight_map' ({e!r})") from e
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{path}: 'weight_map' is not a dict")
  root = os.path.abspath(os.path.dirname(path))
  checked: set[str] = set()
  for name, shard in weight_map.items():
    if isinstance(shard, str) and shard in checked:
      continue
    if not isinstance(shard, str) or not shard or os.path.isabs(shard) or "\0" in shard:
      raise CheckpointError(f"{path}: entry {name!r} names an invalid shard {shard!r}")
    full = os.path.normpath(os.path.join(root, shard))
    if os.path.commonpath([root, full]) != root:
      raise CheckpointError(f"{path}: entry {name!r} names {shard!r}, outside the index's "
                            "directory")
    if not os.path.isfile(full):
      raise CheckpointError(f"{path}: entry {name!r} names {shard!r}, which does not exist")
    checked.add(shard)
  return weight_map
