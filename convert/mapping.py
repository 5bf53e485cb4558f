"""Name and layout mapping between PyTorch Janus state dicts and the Flax param tree.

A `Rule` ties one Flax parameter to one PyTorch tensor name (or, for the scanned layer
stacks, to a name with `{i}` filled in per layer) and says how the layout changes.
The same table drives loading (torch -> Flax) and export (Flax -> torch).
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Callable, Iterable, Mapping

import numpy as np

# Layout kinds:
#   linear  torch (out, in) -> Flax kernel (in..., out...): transpose, then reshape
#   conv    torch OIHW -> Flax HWIO
#   vector  any reshape (biases, norm weights, position embeddings)
#   copy    identical layout (embedding tables, codebook)
KINDS = ("linear", "conv", "vector", "copy")


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: tuple[str, ...]      # path in the Flax param tree
  theirs: str                # PyTorch key; contains "{i}" for stacked layers
  kind: str
  in_axes: int = 1           # linear only: how many leading Flax axes form the input dim

  @property
  def stacked(self) -> bool:
    return "{i}" in self.theirs


def to_torch(kind: str, array: np.ndarray, in_axes: int = 1) -> np.ndarray:
  """One Flax array (one layer of a stack) -> the PyTorch layout."""
  if kind == "linear":
    rows = int(np.prod(array.shape[:in_axes]))
    return array.reshape(rows, -1).T
  if kind == "conv":
    return array.transpose(3, 2, 0, 1)
  if kind == "vector":   # biases and norm weights are 1-D in PyTorch
    return array.reshape(-1)
  return array


# --- the transformers (`JanusForConditionalGeneration`) layout --------------------------
def _mlp(ours: str, theirs: str, second: str) -> list[Rule]:
  return [Rule((ours, "fc1", "kernel"), f"{theirs}.fc1.weight", "linear"),
          Rule((ours, "fc1", "bias"), f"{theirs}.fc1.bias", "vector"),
          Rule((ours, "fc2", "kernel"), f"{theirs}.{second}.weight", "linear"),
          Rule((ours, "fc2", "bias"), f"{theirs}.{second}.bias", "vector")]


def _hf_vq_key(path: tuple[str, ...]) -> tuple[str, str]:
  """Flax VQ path (under "vq") -> (HF key, kind)."""
  parts = list(path)
  leaf = parts.pop()
  out = []
  for i, part in enumerate(parts):
    under_level = i > 0 and re.fullmatch(r"(down|up)_\d+", parts[i - 1])
    m = re.fullmatch(r"(down|up|block|attn)_(\d+)", part)
    if m and (m.group(1) in ("down", "up") or under_level):
      out += [m.group(1), m.group(2)]
    elif part in ("downsample", "upsample"):
      out += [part, "conv"]
    else:
      out.append(part)
  if leaf == "kernel":
    return ".".join(["model.vqmodel"] + out + ["weight"]), "conv"
  if leaf == "embedding":
    return ".".join(["model.vqmodel"] + out + ["embedding", "weight"]), "copy"
  name = {"scale": "weight", "bias": "bias"}[leaf]
  return ".".join(["model.vqmodel"] + out + [name]), "vector"


def hf_rules(flax_paths: Iterable[tuple[str, ...]]) -> list[Rule]:
  """Rules for every Flax parameter path against transformers' Janus key names."""
  llm = "model.language_model"
  layer = f"{llm}.layers.{{i}}"
  vis = "model.vision_model"
  vl = f"{vis}.encoder.layers.{{i}}"
  rules = [
      Rule(("llm", "embed", "embedding"), f"{llm}.embed_tokens.weight", "copy"),
      Rule(("llm", "final_norm", "scale"), f"{llm}.norm.weight", "vector"),
      Rule(("llm", "lm_head", "kernel"), "lm_head.weight", "linear"),
      Rule(("llm", "layers", "attn_norm", "scale"), f"{layer}.input_layernorm.weight", "vector"),
      Rule(("llm", "layers", "mlp_norm", "scale"), f"{layer}.post_attention_layernorm.weight", "vector"),
      Rule(("llm", "layers", "attn", "q"), f"{layer}.self_attn.q_proj.weight", "linear"),
      Rule(("llm", "layers", "attn", "k"), f"{layer}.self_attn.k_proj.weight", "linear"),
      Rule(("llm", "layers", "attn", "v"), f"{layer}.self_attn.v_proj.weight", "linear"),
      Rule(("llm", "layers", "attn", "o"), f"{layer}.self_attn.o_proj.weight", "linear", in_axes=2),
      Rule(("llm", "layers", "mlp", "gate", "kernel"), f"{layer}.mlp.gate_proj.weight", "linear"),
      Rule(("llm", "layers", "mlp", "up", "kernel"), f"{layer}.mlp.up_proj.weight", "linear"),
      Rule(("llm", "layers", "mlp", "down", "kernel"), f"{layer}.mlp.down_proj.weight", "linear"),
      Rule(("vision", "patch_kernel"), f"{vis}.embeddings.patch_embedding.weight", "conv"),
      Rule(("vision", "patch_bias"), f"{vis}.embeddings.patch_embedding.bias", "vector"),
      Rule(("vision", "pos_embed"), f"{vis}.embeddings.position_embedding.weight", "copy"),
      Rule(("vision", "final_norm", "scale"), f"{vis}.post_layernorm.weight", "vector"),
      Rule(("vision", "final_norm", "bias"), f"{vis}.post_layernorm.bias", "vector"),
      Rule(("gen_embed", "embedding"), "model.generation_embeddings.weight", "copy"),
  ]
  for norm, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
    rules += [Rule(("vision", "blocks", norm, "scale"), f"{vl}.{theirs}.weight", "vector"),
              Rule(("vision", "blocks", norm, "bias"), f"{vl}.{theirs}.bias", "vector")]
  for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "projection_layer")):
    rules += [Rule(("vision", "blocks", "attn", ours), f"{vl}.self_attn.{theirs}.weight", "linear",
                   in_axes=2 if ours == "o" else 1),
              Rule(("vision", "blocks", "attn", f"{ours}_bias"), f"{vl}.self_attn.{theirs}.bias", "vector")]
  for fc in ("fc1", "fc2"):
    rules += [Rule(("vision", "blocks", fc, "kernel"), f"{vl}.mlp.{fc}.weight", "linear"),
              Rule(("vision", "blocks", fc, "bias"), f"{vl}.mlp.{fc}.bias", "vector")]
  rules += _mlp("aligner", "model.aligner", "hidden_layers.0")
  rules += _mlp("gen_aligner", "model.generation_aligner", "hidden_layers.0")
  rules += [Rule(("gen_head", "fc1", "kernel"), "model.generation_head.proj_out.weight", "linear"),
            Rule(("gen_head", "fc1", "bias"), "model.generation_head.proj_out.bias", "vector"),
            Rule(("gen_head", "fc2", "kernel"), "model.generation_head.vision_head.weight", "linear"),
            Rule(("gen_head", "fc2", "bias"), "model.generation_head.vision_head.bias", "vector")]
  for path in flax_paths:
    if path[0] == "vq":
      key, kind = _hf_vq_key(path[1:])
      rules.append(Rule(tuple(path), key, kind))
  return rules


def check_rules_cover(rules: list[Rule], flax_paths: Iterable[tuple[str, ...]]) -> None:
  """Every Flax parameter has exactly one rule (an internal invariant of the tables)."""
  ours = [r.ours for r in rules]
  assert len(ours) == len(set(ours)), "duplicate rules"
  missing = set(map(tuple, flax_paths)) - set(ours)
  extra = set(ours) - set(map(tuple, flax_paths))
  assert not missing and not extra, f"rules do not cover the tree: {missing=} {extra=}"


def torch_keys(rules: list[Rule], num_layers: Mapping[str, int]) -> list[str]:
  """All PyTorch keys the rules expect; num_layers maps the first path part to its depth."""
  keys = []
  for r in rules:
    if r.stacked:
      keys += [r.theirs.format(i=i) for i in range(num_layers[r.ours[0]])]
    else:
      keys.append(r.theirs)
  return keys


def torch_shape(rule: Rule, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of one tensor (one layer of a stack) that fills `flax_shape`."""
  shape = tuple(flax_shape[1:] if rule.stacked else flax_shape)
  if rule.kind == "linear":
    return (int(np.prod(shape[rule.in_axes:])), int(np.prod(shape[:rule.in_axes])))
  if rule.kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if rule.kind == "vector":
    return (int(np.prod(shape)),)
  return shape


def iter_params(rules: list[Rule], shapes: Mapping[tuple[str, ...], tuple[int, ...]],
                get: Callable[[str], np.ndarray], dtype=None, scratch: np.ndarray | None = None):
  """Yields (Flax path, numpy array) for each rule, building one parameter at a time.

  shapes: Flax path -> full shape (stacked params include the leading layers axis).
  Each output is allocated once and filled layer by layer (cast to `dtype` on the way),
  so the only copy made is the output itself. With `scratch` (a uint8 buffer at least
  as large as the largest output) every output is a view into it: no page of fresh
  memory per parameter, but each yielded array is only valid until the next one.
  """
  for r in rules:
    shape = tuple(shapes[r.ours])
    keys = ([r.theirs.format(i=i) for i in range(shape[0])] if r.stacked else [r.theirs])
    tensors = (_fetch(get, key) for key in keys)
    first = next(tensors)
    out_dtype = np.dtype(dtype or first.dtype)
    if scratch is None:
      out = np.empty(shape, out_dtype)
    else:
      out = np.ndarray(shape, out_dtype, buffer=scratch)
    slots = out if r.stacked else out[None]
    for i, tensor in enumerate(itertools.chain([first], tensors)):
      _fill(r, keys[i], tensor, slots[i])
    yield r.ours, out


def _fetch(get, key: str) -> np.ndarray:
  try:
    return get(key)
  except KeyError:
    raise KeyError(f"tensor {key!r} is missing from the checkpoint") from None


def _fill(rule: Rule, key: str, tensor: np.ndarray, dst: np.ndarray) -> None:
  """Writes one PyTorch tensor into its Flax slot `dst` (one layer of a stack)."""
  want = torch_shape(rule, (0,) + dst.shape if rule.stacked else dst.shape)
  if tuple(tensor.shape) != want:
    raise ValueError(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {want}")
  if rule.kind == "linear":
    _copy_transposed(dst.reshape(want[1], want[0]), tensor)
  elif rule.kind == "conv":
    dst[...] = tensor.transpose(2, 3, 1, 0)
  else:
    dst[...] = tensor.reshape(dst.shape)


def _copy_transposed(dst: np.ndarray, src: np.ndarray, tile: int = 64) -> None:
  """dst[...] = src.T, tile by tile: a plain strided transpose of a large matrix misses
  the cache on every element and runs several times slower."""
  rows, cols = src.shape
  for i in range(0, rows, tile):
    for j in range(0, cols, tile):
      dst[j:j + tile, i:i + tile] = src[i:i + tile, j:j + tile].T


def max_param_bytes(shapes: Mapping[tuple[str, ...], tuple[int, ...]], dtype) -> int:
  return max(int(np.prod(s)) for s in shapes.values()) * np.dtype(dtype).itemsize


def build_params(rules: list[Rule], shapes: Mapping[tuple[str, ...], tuple[int, ...]],
                 get: Callable[[str], np.ndarray], dtype=None) -> dict:
  """The whole nested Flax param dict (see `iter_params`)."""
  return unflatten(dict(iter_params(rules, shapes, get, dtype)))


def export_tensors(rules: list[Rule], flat_params: Mapping[tuple[str, ...], np.ndarray]) -> dict:
  """Flax params (flattened) -> {PyTorch key: array in PyTorch layout}."""
  out = {}
  for r in rules:
    array = np.asarray(flat_params[r.ours])
    if r.stacked:
      for i in range(array.shape[0]):
        out[r.theirs.format(i=i)] = to_torch(r.kind, array[i], r.in_axes)
    else:
      out[r.theirs] = to_torch(r.kind, array, r.in_axes)
  return out


def unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree
