"""PyTorch Janus checkpoint directory -> checked plan -> Orbax directory (or params in memory).

`plan` opens the weight files lazily, detects the layout, builds our config, and checks
every tensor's presence, shape and dtype before anything is written; `convert` then
streams one parameter at a time into an Orbax checkpoint; `load_pytorch` does the same
into device memory (optionally sharded) without writing anything.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from flax.traverse_util import unflatten_dict

from convert import mapping
from convert.deepseek import DeepseekAsHF, config_from_deepseek, detect_layout
from convert.hf import _TIED, config_from_hf, flax_shapes, special_token_ids
from convert.readers import FLOAT_DTYPES, TensorSource
from janus_jax import checkpoint
from janus_jax.config import JanusConfig
from janus_jax.errors import CheckpointError

LAYOUTS = ("auto", "deepseek", "hf")


@dataclasses.dataclass
class Plan:
  """Everything needed to produce the Flax params of one checkpoint directory."""
  source_dir: str
  layout: str
  config: JanusConfig
  source: TensorSource
  getter: object            # callable(hf_key) -> np.ndarray, with keys()/shape()/dtype()
  rules: list
  shapes: dict

  def describe(self, key: str) -> str:
    """The name of a tensor as the user's checkpoint spells it."""
    if isinstance(self.getter, DeepseekAsHF):
      return self.getter.source_key(key)
    return _TIED.get(key, key) if key not in self.source.keys() else key

  def where(self, key: str) -> str:
    """The file holding a tensor (our key or the checkpoint's), else the directory."""
    name = key if key in self.source.keys() else self.describe(key)
    return self.source.file_of(name) if name in self.source.keys() else self.source_dir


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); restore the file that came with "
                          "the checkpoint.") from e
  except OSError as e:
    raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object; restore "
                          "the file that came with the checkpoint.")
  return data


def _token_ids(source_dir: str) -> dict:
  """Special token ids from the tokenizer files, any problem with them as a CheckpointError."""
  try:
    return special_token_ids(source_dir)
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - malformed JSON or unexpected structure
    for name in ("generation_config.json", "tokenizer.json"):
      path = os.path.join(source_dir, name)
      if os.path.exists(path):
        _read_json(path)      # raises, naming the file, if that is the problem
    raise CheckpointError(f"{source_dir}: cannot read the special token ids from "
                          f"tokenizer.json / generation_config.json ({type(e).__name__}: {e}).") \
        from e


class _TiedGetter:
  """transformers checkpoints with tied embeddings store only the embedding table."""

  def __init__(self, source: TensorSource):
    self.source = source

  def _key(self, key):
    return _TIED[key] if key in _TIED and key not in self.source.keys() else key

  def keys(self):
    return set(self.source.keys()) | {k for k, v in _TIED.items() if v in self.source.keys()}

  def shape(self, key):
    return self.source.shape(self._key(key))

  def dtype(self, key):
    return self.source.dtype(self._key(key))

  def __call__(self, key):
    return self.source(self._key(key))


def plan(source_dir: str, layout: str = "auto", dtype: str | None = None) -> Plan:
  """Opens and checks a PyTorch checkpoint directory; raises CheckpointError on any problem."""
  if layout not in LAYOUTS:
    raise CheckpointError(f"--layout {layout!r}: choose one of {LAYOUTS}.")
  if dtype is not None and dtype not in ("bfloat16", "float32"):
    raise CheckpointError(f"--dtype {dtype!r}: choose bfloat16 or float32.")
  source = TensorSource(source_dir)
  try:
    detected = detect_layout(source.keys(), source=source_dir)
  except ValueError as e:
    raise CheckpointError(f"{e}; this converter reads Janus checkpoints only (not a plain "
                          "language or vision model).") from None
  if layout != "auto" and layout != detected:
    raise CheckpointError(f"{source_dir} holds a {detected!r}-layout checkpoint, not "
                          f"{layout!r}; pass --layout auto or --layout {detected}.")
  config_path = os.path.join(source_dir, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{source_dir} has no config.json; the converter needs the "
                          "checkpoint's own config to know the model sizes.")
  raw = _read_json(config_path)
  token_ids = _token_ids(source_dir)
  try:
    if detected == "hf":
      config = config_from_hf(raw, token_ids)
      getter = _TiedGetter(source) if raw.get("tie_word_embeddings") else source
    else:
      config = config_from_deepseek(raw, token_ids)
      getter = DeepseekAsHF(source)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
    raise CheckpointError(f"{config_path}: cannot build the model config ({what}); is this the "
                          f"config.json of a {detected}-layout Janus checkpoint?") from None
  if dtype is not None:
    config = config.replace(param_dtype=dtype, dtype=dtype)
  shapes = flax_shapes(config)
  rules = mapping.hf_rules(shapes)
  mapping.check_rules_cover(rules, shapes)
  result = Plan(source_dir, detected, config, source, getter, rules, shapes)
  _check_tensors(result)
  return result


def _check_tensors(p: Plan) -> None:
  """Every expected tensor present with the right shape and a float dtype; nothing extra."""
  expected = {}
  for r in p.rules:
    shape = mapping.torch_shape(r, p.shapes[r.ours])
    names = ([r.theirs.format(i=i) for i in range(p.shapes[r.ours][0])] if r.stacked
             else [r.theirs])
    expected.update({n: shape for n in names})
  available = set(p.getter.keys())
  for key, shape in expected.items():
    if key not in available:
      raise CheckpointError(f"{p.source_dir}: tensor {p.describe(key)!r} is missing; the "
                            "checkpoint is incomplete or its config.json describes another model.")
    got = tuple(p.getter.shape(key))
    if got != shape:
      raise CheckpointError(f"{p.where(key)}: tensor {p.describe(key)!r} has shape {got}, "
                            f"config.json implies {shape}; the weights and config.json do not "
                            "belong together.")
    dtype = p.getter.dtype(key)
    if dtype not in FLOAT_DTYPES:
      raise CheckpointError(f"{p.where(key)}: tensor {p.describe(key)!r} has dtype {dtype}; "
                            f"weights must be one of {', '.join(FLOAT_DTYPES)}.")
  extra = sorted(available - set(expected) - set(_TIED))
  if isinstance(p.getter, DeepseekAsHF):
    extra = sorted(set(p.describe(k) for k in extra) | set(p.getter.unexpected()))
  if extra:
    raise CheckpointError(f"{p.where(extra[0])}: unexpected tensor {extra[0]!r} "
                          f"({len(extra)} in all); the checkpoint holds weights its config.json "
                          "does not describe: is config.json the right one?")


def _target_dtype(p: Plan, dtype: str | None):
  import jax.numpy as jnp
  name = dtype or p.config.param_dtype
  return np.dtype(jnp.dtype(name))


def iter_params(p: Plan, dtype: str | None = None, progress: bool = False,
                reuse_buffer: bool = False):
  """(Flax path, numpy array) one parameter at a time, in the target dtype.

  reuse_buffer: every array is a view into one buffer, valid until the next is yielded
  (first-touching fresh pages for each multi-GB parameter costs more than the copy).
  """
  from tqdm import tqdm
  target = _target_dtype(p, dtype)
  scratch = (np.empty(mapping.max_param_bytes(p.shapes, target), np.uint8)
             if reuse_buffer else None)
  items = mapping.iter_params(p.rules, p.shapes, p.getter, target, scratch)
  try:
    for item in tqdm(items, total=len(p.rules), desc="tensors", unit="param",
                     disable=not progress, dynamic_ncols=True):
      p.source.release_pages()   # the output owns its memory; the source pages can go
      yield item
  except CheckpointError:
    raise
  except (KeyError, ValueError) as e:   # a tensor that passed the checks but cannot be laid out
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise CheckpointError(f"{p.source_dir}: {message}") from e


def convert(source_dir: str, dst: str, layout: str = "auto", dtype: str | None = "bfloat16",
            overwrite: bool = False, progress: bool = True) -> dict:
  """Converts a checkpoint directory to a converted (Orbax) directory. Returns a summary."""
  start = time.perf_counter()
  _check_destination(source_dir, dst, overwrite)   # before the (slower) checks of SRC
  p = plan(source_dir, layout, dtype)
  with checkpoint.atomic_directory(dst, overwrite) as tmp:
    writer = checkpoint.ParamsWriter(tmp)
    vq = {}
    for path, array in iter_params(p, progress=progress, reuse_buffer=True):
      if path[0] == "vq":           # ~150 small tensors: one write instead of many
        vq[path] = array.copy()     # the buffer is reused for the next parameter
        continue
      writer.add(unflatten_dict({path: array}))
      del array
    writer.add(unflatten_dict(vq))
    written = writer.close()
    checkpoint.write_sidecars(tmp, p.config, source_dir)
  return dict(source=source_dir, destination=dst, layout=p.layout, dtype=p.config.param_dtype,
              params=sum(int(np.prod(s)) for s in p.shapes.values()), bytes=written,
              source_bytes=p.source.size_bytes, seconds=time.perf_counter() - start)


def _check_destination(source_dir: str, dst: str, overwrite: bool) -> None:
  src, out = os.path.realpath(source_dir), os.path.realpath(dst)
  if out == src:
    raise CheckpointError(f"{dst}: DST must differ from SRC.")
  if not os.path.lexists(dst):
    return
  if not overwrite:
    raise CheckpointError(f"{os.path.abspath(dst)} already exists; choose another destination "
                          "or pass --overwrite to replace it.")
  if not os.path.isdir(dst) or os.path.islink(dst):
    raise CheckpointError(f"{os.path.abspath(dst)} exists and is not a directory; --overwrite "
                          "replaces only a directory. Remove it or choose another destination.")
  if os.path.commonpath([src, out]) == out:
    raise CheckpointError(f"{os.path.abspath(dst)} contains SRC; --overwrite would delete the "
                          "checkpoint being converted. Choose another destination.")


def load_pytorch(source_dir: str, dtype: str | None = None, mesh=None, rules=None,
                 layout: str = "auto", progress: bool = False):
  """Reads a PyTorch checkpoint directory straight into jax arrays. Returns (config, params).

  With a mesh each parameter is placed with its rule-given sharding as soon as it is
  built, so at most one parameter is held on the host at a time.
  """
  import jax
  from janus_jax import sharding as sharding_lib
  from janus_jax.model import param_shardings
  p = plan(source_dir, layout, dtype)
  if mesh is not None:
    from flax.traverse_util import flatten_dict
    placement = flatten_dict(param_shardings(p.config, mesh, rules or sharding_lib.RULES))
  else:
    placement = {}
  flat = {}
  for path, array in iter_params(p, progress=progress):
    flat[path] = jax.device_put(array, placement.get(path))
    del array
  return p.config, unflatten_dict(flat)
