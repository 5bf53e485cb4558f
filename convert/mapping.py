"""Name and layout mapping between PyTorch Janus state dicts and the Flax param tree.

A `Rule` ties one Flax parameter to one PyTorch tensor name (or, for the scanned layer
stacks, to a name with `{i}` filled in per layer) and says how the layout changes.
The same table drives loading (torch -> Flax) and export (Flax -> torch).
"""
from __future__ import annotations

import dataclasses
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


def to_flax(kind: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """One PyTorch tensor -> the Flax layout of `shape` (one layer of a stack)."""
  if kind == "linear":
    if tensor.ndim != 2:
      raise ValueError(f"expected a 2-D linear weight, got shape {tensor.shape}")
    tensor = tensor.T
  elif kind == "conv":
    if tensor.ndim != 4:
      raise ValueError(f"expected a 4-D conv weight, got shape {tensor.shape}")
    tensor = tensor.transpose(2, 3, 1, 0)
  if int(np.prod(tensor.shape)) != int(np.prod(shape)):
    raise ValueError(f"shape {tensor.shape} does not fit the expected {shape}")
  if kind in ("conv", "copy") and tuple(tensor.shape) != tuple(shape):
    raise ValueError(f"shape {tensor.shape} (after layout change) != expected {shape}")
  return tensor.reshape(shape)


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
                get: Callable[[str], np.ndarray], dtype=None):
  """Yields (Flax path, numpy array) for each rule, building one parameter at a time.

  shapes: Flax path -> full shape (stacked params include the leading layers axis).
  A stacked parameter is written layer by layer into one preallocated array, so the only
  copy made is the output itself (cast to `dtype` on assignment).
  """
  for r in rules:
    shape = tuple(shapes[r.ours])
    if r.stacked:
      first = _layout(r, get, r.theirs.format(i=0), shape[1:])
      out = np.empty(shape, dtype or first.dtype)
      out[0] = first
      for i in range(1, shape[0]):
        out[i] = _layout(r, get, r.theirs.format(i=i), shape[1:])
    else:
      out = _layout(r, get, r.theirs, shape)
      out = np.array(out, dtype=dtype or out.dtype)   # own the memory: sources are mmapped
    yield r.ours, out


def build_params(rules: list[Rule], shapes: Mapping[tuple[str, ...], tuple[int, ...]],
                 get: Callable[[str], np.ndarray], dtype=None) -> dict:
  """The whole nested Flax param dict (see `iter_params`)."""
  return unflatten(dict(iter_params(rules, shapes, get, dtype)))


def _layout(rule: Rule, get, key: str, shape) -> np.ndarray:
  try:
    tensor = get(key)
  except KeyError:
    raise KeyError(f"tensor {key!r} is missing from the checkpoint") from None
  try:
    return to_flax(rule.kind, tensor, shape)
  except ValueError as e:
    raise ValueError(f"tensor {key!r}: {e}") from None


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
