"""The original DeepSeek (`multi_modality`) checkpoint layout as an adapter over transformers'.

The rules of `convert.mapping` speak the transformers (`JanusForConditionalGeneration`)
key names only. An original checkpoint is read through `DeepseekAsHF`, which renames keys
(JANUS.md §2bis, the table of transformers' `convert_janus_weights_to_hf.py`), splits the
fused SigLIP `attn.qkv` into q/k/v and squeezes `pos_embed`; `hf_tensors_to_deepseek` is
the inverse for export. `config_from_deepseek` reads the original config.json (§1.2).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from janus_jax.config import TOKEN_FIELDS, JanusConfig, LLMConfig, VisionConfig, VQConfig

# --- key names ------------------------------------------------------------------------------
# One table serves both directions: a {slot} matches _SLOTS[slot] on one side and is copied to
# the other. T = the original SigLIP tower, V = transformers' vision model. {x} (q/k/v) exists
# only on the transformers side: SigLIP's fused qkv has rows [q; k; v] (JANUS.md §2.1).
_TABLE = """
T.pos_embed                         V.embeddings.position_embedding.weight
T.patch_embed.proj.{p}              V.embeddings.patch_embedding.{p}
T.blocks.{i}.norm{n}.{p}            V.encoder.layers.{i}.layer_norm{n}.{p}
T.blocks.{i}.attn.qkv.{p}           V.encoder.layers.{i}.self_attn.{x}_proj.{p}
T.blocks.{i}.attn.proj.{p}          V.encoder.layers.{i}.self_attn.projection_layer.{p}
T.blocks.{i}.mlp.{fc}.{p}           V.encoder.layers.{i}.mlp.{fc}.{p}
T.norm.{p}                          V.post_layernorm.{p}
aligner.layers.0.{p}                model.aligner.fc1.{p}
aligner.layers.2.{p}                model.aligner.hidden_layers.0.{p}
gen_aligner.layers.0.{p}            model.generation_aligner.fc1.{p}
gen_aligner.layers.2.{p}            model.generation_aligner.hidden_layers.0.{p}
gen_head.output_mlp_projector.{p}   model.generation_head.proj_out.{p}
gen_head.vision_head.{p}            model.generation_head.vision_head.{p}
gen_embed.weight                    model.generation_embeddings.weight
language_model.lm_head.weight       lm_head.weight
language_model.model.{rest}         model.language_model.{rest}
gen_vision_model.{vq}               model.vqmodel.{vq}
"""
_SLOTS = {"i": r"\d+", "p": r"weight|bias", "n": r"1|2", "fc": r"fc1|fc2", "x": r"q|k|v",
          "rest": r".+", "vq": r".+"}   # {vq} also gets the segment renames of _vq_rename
_PARTS = ("q", "k", "v")
_TOWER = "vision_model.vision_tower"
_POS_EMBED = f"{_TOWER}.pos_embed"
# Stored in the original checkpoints but never used by the model (transformers drops them).
_UNUSED = re.compile(rf"{re.escape(_TOWER)}\.attn_pool\..+"
                     r"|gen_vision_model\.quantize\.codebook_used")


def _compile(template: str) -> re.Pattern:
  pattern = re.escape(template)
  for name, rx in _SLOTS.items():
    pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
  return re.compile(pattern)


_ROWS = [line.replace("T.", f"{_TOWER}.").replace("V.", "model.vision_model.").split()
         for line in _TABLE.strip().splitlines()]
_ROWS = [(_compile(ds), _compile(hf), ds, hf) for ds, hf in _ROWS]
_QKV_HF = _compile("model.vision_model.encoder.layers.{i}.self_attn.{x}_proj.{p}")

# VQ sub-module names, original -> transformers, keyed by the preceding segment.
_VQ_TO_HF = {("encoder", "conv_blocks"): "down", ("decoder", "conv_blocks"): "up",
             ("mid", "0"): "block_1", ("mid", "1"): "attn_1", ("mid", "2"): "block_2"}
_VQ_TO_DS = {(prev, new): old for (prev, old), new in _VQ_TO_HF.items()}


def _vq_rename(rest: str, to_hf: bool) -> str:
  table, res = (_VQ_TO_HF, ("res", "block")) if to_hf else (_VQ_TO_DS, ("block", "res"))
  segs = rest.split(".")
  # The look-behind is on the unrenamed previous segment, as in the transformers regexes.
  return ".".join(segs[:1] + [res[1] if seg == res[0] else table.get((prev, seg), seg)
                              for prev, seg in zip(segs, segs[1:])])


def _translate(key: str, to_hf: bool) -> list[str] | None:
  for ds, hf, ds_template, hf_template in _ROWS:
    m = (ds if to_hf else hf).fullmatch(key)
    if m:
      slots = m.groupdict()
      if "vq" in slots:
        slots["vq"] = _vq_rename(slots["vq"], to_hf)
      if to_hf and "{x}" in hf_template:
        return [hf_template.format(x=x, **slots) for x in _PARTS]
      return [(hf_template if to_hf else ds_template).format(**slots)]   # drops {x}
  return None


def deepseek_to_hf_name(key: str) -> list[str] | None:
  """Original key -> its transformers key(s): one, or three (q, k, v) for `attn.qkv`.

  Returns None for keys that are known and unused (attn_pool, codebook_used); raises
  KeyError for keys that are not part of the original Janus layout.
  """
  if _UNUSED.fullmatch(key):
    return None
  names = _translate(key, to_hf=True)
  if names is None:
    raise KeyError(f"{key!r} is not a key of the original DeepSeek Janus layout")
  return names


def hf_to_deepseek_name(hf_key: str) -> str | None:
  """transformers key -> original key (q/k/v_proj all map to their fused `attn.qkv`).

  Returns None for keys outside the transformers Janus layout.
  """
  names = _translate(hf_key, to_hf=False)
  return names and names[0]


def unexpected_keys(keys: Iterable[str]) -> list[str]:
  """Original keys that are neither mapped nor known-unused."""
  out = []
  for key in keys:
    try:
      deepseek_to_hf_name(key)
    except KeyError:
      out.append(key)
  return out


# --- tensors ----------------------------------------------------------------------------------
class DeepseekAsHF:
  """Serves transformers-layout tensors from an original-layout checkpoint, lazily.

  `source` is a callable `get(original_key) -> array` (e.g. a lazy file reader) or a
  mapping; `keys` defaults to `source.keys()`. The object is itself a callable getter with
  `keys()`, a drop-in for `convert.hf.SafetensorsDir` in `mapping.build_params`.
  q/k/v are views into the fused qkv tensor (dim 0 thirds), not copies.
  """

  def __init__(self, source: Callable[[str], np.ndarray] | Mapping[str, np.ndarray],
               keys: Iterable[str] | None = None):
    self._get = source if callable(source) else source.__getitem__
    self._source_keys = list(source.keys() if keys is None else keys)
    self._origin: dict[str, tuple[str, int | None]] = {}   # hf key -> (original key, qkv part)
    for key in self._source_keys:
      try:
        names = deepseek_to_hf_name(key)
      except KeyError:
        continue
      for part, name in enumerate(names or ()):
        self._origin[name] = (key, part if len(names) == 3 else None)

  def keys(self):
    """The transformers keys this checkpoint can serve."""
    return self._origin.keys()

  def unexpected(self, keys: Iterable[str] | None = None) -> list[str]:
    """Original keys (default: the source's) that are neither mapped nor known-unused."""
    return unexpected_keys(self._source_keys if keys is None else keys)

  def __contains__(self, hf_key: str) -> bool:
    return hf_key in self._origin

  def __call__(self, hf_key: str) -> np.ndarray:
    if hf_key not in self._origin:
      raise KeyError(f"{hf_key!r} (original: {hf_to_deepseek_name(hf_key)!r}) is not in the "
                     "checkpoint")
    key, part = self._origin[hf_key]
    tensor = self._get(key)
    if part is not None:
      rows = tensor.shape[0]
      if rows % 3:
        raise ValueError(f"{key!r} has {rows} rows; a fused qkv needs a multiple of 3")
      return tensor[part * rows // 3:(part + 1) * rows // 3]   # basic slicing: a view
    if key == _POS_EMBED:
      if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise ValueError(f"{key!r} has shape {tuple(tensor.shape)}; expected (1, tokens, width)")
      return tensor[0]
    return tensor

  get = __call__


def hf_tensors_to_deepseek(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers-layout tensors -> original layout (fuses q/k/v, unsqueezes pos_embed).

  Does not invent the unused attn_pool weights or the codebook_used buffer.
  """
  out: dict[str, np.ndarray | None] = {}
  fused: dict[str, dict[str, np.ndarray]] = {}
  for hf_key, array in tensors.items():
    key = hf_to_deepseek_name(hf_key)
    if key is None:
      raise ValueError(f"{hf_key!r} is not a key of the transformers Janus layout")
    m = _QKV_HF.fullmatch(hf_key)
    if m:
      fused.setdefault(key, {})[m.group("x")] = array
      out.setdefault(key, None)   # keeps the first-seen order
    else:
      out[key] = np.asarray(array)[None] if key == _POS_EMBED else array
  for key, parts in fused.items():
    if set(parts) != set(_PARTS):
      raise ValueError(f"{key!r}: got only {sorted(parts)} of q/k/v; cannot fuse")
    out[key] = np.concatenate([np.asarray(parts[x]) for x in _PARTS], axis=0)
  return out


# --- layout detection ------------------------------------------------------------------------
# An LLM prefix AND a Janus-specific module: a plain Llama, or another VLM that also has
# `language_model` keys, is rejected here rather than failing later on a missing tensor.
_MARKERS = {
    "deepseek": (("language_model.",), (f"{_TOWER}.", "gen_vision_model.", "gen_head.")),
    "hf": (("model.language_model.",),
           ("model.vqmodel.", "model.generation_", "model.aligner.")),
}


def detect_layout(keys: Iterable[str], source: str = "the checkpoint") -> str:
  """"deepseek" (original multi_modality) or "hf" (transformers) from the tensor names."""
  keys = list(keys)
  for layout, (llm, janus) in _MARKERS.items():
    if any(k.startswith(llm) for k in keys) and any(k.startswith(janus) for k in keys):
      return layout
  raise ValueError(f"{source} does not look like a Janus checkpoint (no language_model/vision "
                   f"keys; found e.g. {sorted(keys)[:5]})")


# --- config -----------------------------------------------------------------------------------
_SIGLIP = {"siglip_large_patch16_384": dict(patch_size=16, width=1024, layers=24, heads=16,
                                            mlp_ratio=4)}
# LlamaGen VQ models; the original builds `VQ_models[cls]()` WITHOUT params (ModelArgs defaults).
_VQ = {"VQ-16": dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                     z_channels=256)}
# transformers LlamaConfig defaults: Janus-Pro-7B's language_config relies on them (§1.2).
_LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
              num_attention_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0,
              max_position_embeddings=2048, model_type="llama", hidden_act="silu")


def _params(cfg: dict, section: str, classes: Iterable[str]) -> dict:
  sec = cfg.get(section)
  if not isinstance(sec, dict):
    raise ValueError(f"config.json has no {section}; is it a multi_modality (Janus) config?")
  if sec.get("cls") not in classes:
    raise ValueError(f"{section}.cls={sec.get('cls')!r} is not supported; "
                     f"expected one of {list(classes)}")
  return dict(sec.get("params") or {})


def _check(field: str, value, expected, why: str) -> None:
  if value != expected:
    raise ValueError(f"{field}={value!r} is inconsistent: expected {expected!r} ({why})")


def _int(field: str, value) -> int:
  if not isinstance(value, int):
    raise ValueError(f"{field} is missing or not an integer: {value!r}")
  return value


def _llm(cfg: dict) -> LLMConfig:
  lang = cfg.get("language_config") or {}
  lang = {**_LLAMA, **{k: v for k, v in lang.get("params", lang).items() if v is not None}}
  for field in ("model_type", "hidden_act"):
    _check(f"language_config.{field}", lang[field], _LLAMA[field], "a Llama decoder")
  for field in ("rope_scaling", "attention_bias", "mlp_bias"):
    _check(f"language_config.{field}", lang.get(field) or None, None, "not supported")
  rope = lang.get("rope_parameters") or {}
  _check("language_config.rope_parameters.rope_type", rope.get("rope_type", "default"),
         "default", "only plain RoPE is supported")
  heads = lang["num_attention_heads"]
  return LLMConfig(
      vocab_size=lang["vocab_size"], hidden_size=lang["hidden_size"],
      intermediate_size=lang["intermediate_size"], num_layers=lang["num_hidden_layers"],
      num_heads=heads, num_kv_heads=lang.get("num_key_value_heads") or heads,
      head_dim=lang.get("head_dim") or lang["hidden_size"] // heads,
      rope_theta=float(rope.get("rope_theta", lang["rope_theta"])),
      rms_norm_eps=lang["rms_norm_eps"], max_position_embeddings=lang["max_position_embeddings"])


def _vision(cfg: dict) -> VisionConfig:
  p = _params(cfg, "vision_config", ("CLIPVisionTower",))
  name = p.get("model_name", "siglip_large_patch16_384")   # defaults: CLIPVisionTower's
  if name not in _SIGLIP:
    raise ValueError(f"vision_config.params.model_name={name!r} is not supported; "
                     f"known: {list(_SIGLIP)}")
  if p.get("pixel_mean") is not None and p.get("pixel_std") is not None:
    # The tower would normalise again inside the model; ours expects processor output.
    raise ValueError("vision_config.params.pixel_mean/pixel_std (in-model normalisation) "
                     "is not supported")
  spec, size = _SIGLIP[name], p.get("image_size", 336)
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      raise ValueError(f"vision_config.params.image_size={size!r}: only square is supported")
    size = size[0]
  # create_siglip_vit builds only the blocks up to the selected one (JANUS.md §2.1).
  select, total = p.get("select_layer", -2), spec["layers"]
  layers = min(total, total + select + 1) if select <= 0 else min(total, select)
  if layers < 1:
    raise ValueError(f"vision_config.params.select_layer={select} leaves no block")
  return VisionConfig(image_size=size, patch_size=spec["patch_size"], width=spec["width"],
                      num_layers=layers, num_heads=spec["heads"],
                      mlp_dim=int(spec["width"] * spec["mlp_ratio"]))


def _projector(cfg: dict, section: str, input_dim: int, input_why: str, hidden: int) -> None:
  p = _params(cfg, section, ("MlpProjector",))
  _check(f"{section}.params.projector_type", p.get("projector_type"), "mlp_gelu",
         "the only supported type")
  # MlpProjector's default depth is 1 (a single Linear); the released models use 2.
  _check(f"{section}.params.depth", p.get("depth", 1), 2, "Linear-GELU-Linear")
  _check(f"{section}.params.input_dim", p.get("input_dim"), input_dim, input_why)
  _check(f"{section}.params.n_embed", p.get("n_embed"), hidden, "language hidden_size")


def config_from_deepseek(cfg: dict, token_ids: Mapping[str, int] | None = None,
                         **overrides) -> JanusConfig:
  """Original `multi_modality` config.json (+ tokenizer ids) -> JanusConfig.

  Raises ValueError naming the field when the sections disagree with each other.
  """
  llm, vision = _llm(cfg), _vision(cfg)
  p = _params(cfg, "gen_vision_config", tuple(_VQ))
  # Generated images have the understanding resolution (384 for the released models).
  vq = VQConfig(image_size=vision.image_size,
                codebook_size=_int("gen_vision_config.params.image_token_size",
                                   p.get("image_token_size")),
                codebook_dim=_int("gen_vision_config.params.n_embed", p.get("n_embed")),
                **_VQ[cfg["gen_vision_config"]["cls"]])
  _projector(cfg, "aligner_config", vision.width, "SigLIP width", llm.hidden_size)
  _projector(cfg, "gen_aligner_config", vq.codebook_dim, "gen_vision_config.params.n_embed",
             llm.hidden_size)
  p = _params(cfg, "gen_head_config", ("vision_head",))
  _check("gen_head_config.params.n_embed", p.get("n_embed"), llm.hidden_size,
         "language hidden_size")
  _check("gen_head_config.params.image_token_size", p.get("image_token_size"),
         vq.codebook_size, "gen_vision_config.params.image_token_size")
  head_dim = _int("gen_head_config.params.image_token_embed", p.get("image_token_embed"))
  ids = _token_ids(token_ids or {}, llm.vocab_size)
  return JanusConfig(llm=llm, vision=vision, vq=vq, gen_head_dim=head_dim, **ids, **overrides)


def _token_ids(token_ids: Mapping[str, int], vocab_size: int) -> dict[str, int]:
  """The tokenizer's ids; a missing one keeps JanusConfig's default only if it fits the vocab."""
  unknown = set(token_ids) - set(TOKEN_FIELDS)
  if unknown:
    raise ValueError(f"unknown token fields {sorted(unknown)}; known: {list(TOKEN_FIELDS)}")
  defaults = {f.name: f.default for f in dataclasses.fields(JanusConfig)}
  ids = {f: token_ids[f] for f in TOKEN_FIELDS if token_ids.get(f) is not None}
  for field in set(TOKEN_FIELDS) - set(ids):
    if not 0 <= defaults[field] < vocab_size:
      raise ValueError(f"the tokenizer gives no {field} and JanusConfig's default "
                       f"{defaults[field]} is outside the vocabulary of {vocab_size}")
  return ids
