"""The original DeepSeek (`multi_modality`) checkpoint layout as an adapter over transformers'.

The rules of `convert.mapping` speak the transformers (`JanusForConditionalGeneration`)
key names only. An original checkpoint is read through `DeepseekAsHF`, which renames keys
(JANUS.md §2bis, the table of transformers' `convert_janus_weights_to_hf.py`), splits the
fused SigLIP `attn.qkv` into q/k/v and squeezes `pos_embed`; `hf_tensors_to_deepseek` is
the inverse for export. `config_from_deepseek` reads the original config.json (§1.2).
"""
from __future__ import annotations

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


_ABBREV = {"T.": f"{_TOWER}.", "V.": "model.vision_model."}
_ROWS = [[_ABBREV.get(t[:2], t[:2]) + t[2:] for t in line.split()]
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

  None for known-unused keys (attn_pool, codebook_used); KeyError for unknown keys.
  """
  if _UNUSED.fullmatch(key):
    return None
  names = _translate(key, to_hf=True)
  if names is None:
    raise KeyError(f"{key!r} is not a key of the original DeepSeek Janus layout")
  return names


def hf_to_deepseek_name(hf_key: str) -> str | None:
  """transformers key -> original key (q/k/v_proj map to their fused `attn.qkv`), or None."""
  names = _translate(hf_key, to_hf=False)
  return names and names[0]


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
    self._source = source
    self._get = source if callable(source) else source.__getitem__
    self._source_keys = list(source.keys() if keys is None else keys)
    self._origin: dict[str, tuple[str, int | None]] = {}   # hf key -> (original key, qkv part)
    for key in self._source_keys:
      names = None if _UNUSED.fullmatch(key) else _translate(key, to_hf=True)
      for part, name in enumerate(names or ()):
        self._origin[name] = (key, part if len(names) == 3 else None)

  def keys(self):
    """The transformers keys this checkpoint can serve."""
    return self._origin.keys()

  def shape(self, hf_key: str) -> tuple[int, ...]:
    """Shape of a served tensor without reading it (needs a source with `shape`)."""
    key, part = self._origin[hf_key]
    shape = tuple(self._source.shape(key)) if hasattr(self._source, "shape") else self._get(key).shape
    if part is not None:
      return (shape[0] // 3,) + tuple(shape[1:])
    return tuple(shape[1:]) if key == _POS_EMBED else tuple(shape)

  def dtype(self, hf_key: str) -> str:
    key, _ = self._origin[hf_key]
    if hasattr(self._source, "dtype"):
      return self._source.dtype(key)
    return np.dtype(self._get(key).dtype).name

  def source_key(self, hf_key: str) -> str:
    """The original-layout key a served tensor comes from."""
    return self._origin[hf_key][0]

  def unexpected(self, keys: Iterable[str] | None = None) -> list[str]:
    """Original keys (default: the source's) that are neither mapped nor known-unused."""
    return [k for k in (self._source_keys if keys is None else keys)
            if not _UNUSED.fullmatch(k) and _translate(k, to_hf=True) is None]

  def __call__(self, hf_key: str) -> np.ndarray:
    key, part = self._origin[hf_key]   # KeyError: build_params names the missing tensor
    tensor = self._get(key)
    if part is not None:
      rows = tensor.shape[0]
      if rows % 3:
        raise ValueError(f"{key!r} has {rows} rows; a fused qkv needs a multiple of 3")
      return tensor[part * rows // 3:(part + 1) * rows // 3]   # basic slicing: a view
    # squeeze(0) as a view; unlike [0], reshape fails unless the leading dim is 1.
    return tensor.reshape(tensor.shape[1:]) if key == _POS_EMBED else tensor

  get = __call__


def hf_tensors_to_deepseek(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers-layout tensors -> original layout (fuses q/k/v, unsqueezes pos_embed).

  Does not invent the unused attn_pool weights or the codebook_used buffer.
  """
  out, fused = {}, {}
  for hf_key, array in tensors.items():
    key = hf_to_deepseek_name(hf_key)
    if key is None:
      raise ValueError(f"{hf_key!r} is not a key of the transformers Janus layout")
    m = _QKV_HF.fullmatch(hf_key)
    if m:   # the placeholder in `out` keeps the order; fused below
      fused.setdefault(key, {})[m.group("x")] = array
    out[key] = np.asarray(array)[None] if key == _POS_EMBED else array
  for key, parts in fused.items():
    if set(parts) != set(_PARTS):
      raise ValueError(f"{key!r}: got only {sorted(parts)} of q/k/v; cannot fuse")
    out[key] = np.concatenate([np.asarray(parts[x]) for x in _PARTS], axis=0)
  return out


# --- layout detection ------------------------------------------------------------------------
# An LLM prefix AND a Janus-only module: rejects a plain Llama or another VLM up front.
_MARKERS = {"deepseek": ("language_model.", (f"{_TOWER}.", "gen_vision_model.", "gen_head.")),
            "hf": ("model.language_model.", ("model.vqmodel.", "model.generation_"))}


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
                                            mlp_ratio=4)}   # SigLIP_MODEL_CONFIG
# LlamaGen VQ models; the original builds `VQ_models[cls]()` WITHOUT params (ModelArgs defaults).
_VQ = {"VQ-16": dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                     z_channels=256)}
# transformers LlamaConfig defaults: Janus-Pro-7B's language_config relies on them (§1.2).
_LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
              num_attention_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0,
              max_position_embeddings=2048, model_type="llama", hidden_act="silu")


def _params(cfg: dict, section: str, classes: Iterable[str]) -> dict:
  sec = cfg.get(section)
  if not isinstance(sec, dict) or sec.get("cls") not in classes:
    raise ValueError(f"{section}.cls={(sec or {}).get('cls')!r}: expected one of "
                     f"{list(classes)} (is this a multi_modality Janus config.json?)")
  return dict(sec.get("params") or {})


def _check(field: str, value, expected, why: str) -> None:
  if value != expected:
    raise ValueError(f"{field}={value!r} is inconsistent: expected {expected!r} ({why})")


def _int(section: str, params: dict, field: str) -> int:
  if not isinstance(params.get(field), int):
    raise ValueError(f"{section}.params.{field} is missing or not an integer")
  return params[field]


def _llm(cfg: dict) -> LLMConfig:
  lang = cfg.get("language_config") or {}
  lang = {**_LLAMA, **{k: v for k, v in lang.get("params", lang).items() if v is not None}}
  for field, want in (("model_type", "llama"), ("hidden_act", "silu"), ("rope_scaling", None),
                      ("attention_bias", None), ("mlp_bias", None)):
    _check(f"language_config.{field}", lang.get(field) or None, want, "our Llama decoder")
  heads = lang["num_attention_heads"]
  return LLMConfig(
      vocab_size=lang["vocab_size"], hidden_size=lang["hidden_size"],
      intermediate_size=lang["intermediate_size"], num_layers=lang["num_hidden_layers"],
      num_heads=heads, num_kv_heads=lang.get("num_key_value_heads") or heads,
      head_dim=lang.get("head_dim") or lang["hidden_size"] // heads,
      rope_theta=float(lang["rope_theta"]),
      rms_norm_eps=lang["rms_norm_eps"], max_position_embeddings=lang["max_position_embeddings"])


# Explicit sizes a config may carry in vision_config.params (an extension of ours: the
# original only knows named towers). They override the named tower's numbers.
_SIGLIP_FIELDS = ("patch_size", "width", "layers", "heads", "mlp_ratio")


def _vision(cfg: dict) -> VisionConfig:
  p = _params(cfg, "vision_config", ("CLIPVisionTower",))
  name = p.get("model_name", "siglip_large_patch16_384")   # defaults: CLIPVisionTower's
  spec = {**_SIGLIP.get(name, {}), **{f: p[f] for f in _SIGLIP_FIELDS if f in p}}
  if set(spec) != set(_SIGLIP_FIELDS):
    raise ValueError(f"vision_config.params.model_name={name!r} is not supported "
                     f"(known: {list(_SIGLIP)}) and the params do not give {_SIGLIP_FIELDS}")
  if p.get("pixel_mean") is not None and p.get("pixel_std") is not None:
    # The tower would normalise again inside the model; ours takes the processor's output.
    raise ValueError("vision_config.params.pixel_mean/pixel_std: in-model normalisation "
                     "is not supported")
  size = p.get("image_size", 336)
  # create_siglip_vit builds only the blocks up to the selected one (JANUS.md §2.1).
  select, total = p.get("select_layer", -2), spec["layers"]
  layers = min(total, total + select + 1) if select <= 0 else min(total, select)
  if layers < 1:
    raise ValueError(f"vision_config.params.select_layer={select} leaves no block")
  return VisionConfig(image_size=size, patch_size=spec["patch_size"], width=spec["width"],
                      num_layers=layers, num_heads=spec["heads"],
                      mlp_dim=int(spec["width"] * spec["mlp_ratio"]))


def deepseek_config_dict(config: JanusConfig) -> dict:
  """JanusConfig -> an original `multi_modality` config.json dict.

  The released sizes are written exactly as DeepSeek's files have them; other sizes add
  explicit fields (`width`, `ch_mult`, ...) that `config_from_deepseek` reads back.
  """
  llm, vis, vq, d = config.llm, config.vision, config.vq, config.llm.hidden_size
  vision = {"image_size": vis.image_size, "model_name": "siglip_large_patch16_384",
            "select_feature": "same", "select_layer": -1}
  spec = dict(patch_size=vis.patch_size, width=vis.width, layers=vis.num_layers,
              heads=vis.num_heads, mlp_ratio=vis.mlp_dim / vis.width)
  if spec != _SIGLIP["siglip_large_patch16_384"]:
    vision.update(spec)
  gen_vision = {"image_token_size": vq.codebook_size, "n_embed": vq.codebook_dim}
  vq_spec = dict(base_channels=vq.base_channels, channel_mult=vq.channel_mult,
                 num_res_blocks=vq.num_res_blocks, z_channels=vq.z_channels)
  if vq_spec != _VQ["VQ-16"] or vq.image_size != vis.image_size:
    gen_vision.update(vq_spec, channel_mult=list(vq.channel_mult), image_size=vq.image_size)
  mlp = lambda n_in: {"cls": "MlpProjector", "params": {
      "depth": 2, "input_dim": n_in, "n_embed": d, "projector_type": "mlp_gelu"}}
  return {
      "model_type": "multi_modality",
      "vision_config": {"cls": "CLIPVisionTower", "params": vision},
      "aligner_config": mlp(vis.width),
      "gen_vision_config": {"cls": "VQ-16", "params": gen_vision},
      "gen_aligner_config": mlp(vq.codebook_dim),
      "gen_head_config": {"cls": "vision_head", "params": {
          "image_token_embed": config.gen_head_dim, "image_token_size": vq.codebook_size,
          "n_embed": d}},
      "language_config": {
          "model_type": "llama", "vocab_size": llm.vocab_size, "hidden_size": d,
          "intermediate_size": llm.intermediate_size, "num_hidden_layers": llm.num_layers,
          "num_attention_heads": llm.num_heads, "num_key_value_heads": llm.num_kv_heads,
          "head_dim": llm.head_dim, "rope_theta": llm.rope_theta,
          "rms_norm_eps": llm.rms_norm_eps,
          "max_position_embeddings": llm.max_position_embeddings},
  }


def _projector(cfg: dict, section: str, input_dim: tuple, output_dim: tuple) -> None:
  """An MlpProjector section must be mlp_gelu of depth 2 (its default depth is 1)."""
  p = _params(cfg, section, ("MlpProjector",))
  for field, (want, why) in {"projector_type": ("mlp_gelu", "the only supported type"),
                             "depth": (2, "Linear-GELU-Linear"), "input_dim": input_dim,
                             "n_embed": output_dim}.items():
    _check(f"{section}.params.{field}", p.get(field, 1 if field == "depth" else None), want, why)


def config_from_deepseek(cfg: dict, token_ids: Mapping[str, int] | None = None,
                         **overrides) -> JanusConfig:
  """Original `multi_modality` config.json (+ tokenizer ids) -> JanusConfig.

  Raises ValueError naming the field when the sections disagree with each other.
  """
  llm, vision = _llm(cfg), _vision(cfg)
  gen = _params(cfg, "gen_vision_config", tuple(_VQ))
  head = _params(cfg, "gen_head_config", ("vision_head",))
  # Generated images have the understanding resolution (384 for the released models).
  vq_spec = {**_VQ[cfg["gen_vision_config"]["cls"]],
             **{f: gen[f] for f in ("base_channels", "num_res_blocks", "z_channels") if f in gen}}
  if "channel_mult" in gen:
    vq_spec["channel_mult"] = tuple(gen["channel_mult"])
  vq = VQConfig(image_size=gen.get("image_size", vision.image_size), **vq_spec,
                codebook_size=_int("gen_vision_config", gen, "image_token_size"),
                codebook_dim=_int("gen_vision_config", gen, "n_embed"))
  hidden = (llm.hidden_size, "the language hidden_size")
  _projector(cfg, "aligner_config", (vision.width, "the SigLIP width"), hidden)
  _projector(cfg, "gen_aligner_config", (vq.codebook_dim, "the codebook dim"), hidden)
  _check("gen_head_config.params.n_embed", head.get("n_embed"), *hidden)
  _check("gen_head_config.params.image_token_size", head.get("image_token_size"),
         vq.codebook_size, "gen_vision_config.params.image_token_size")
  return JanusConfig(llm=llm, vision=vision, vq=vq,
                     gen_head_dim=_int("gen_head_config", head, "image_token_embed"),
                     **_token_ids(token_ids or {}, llm.vocab_size), **overrides)


def _token_ids(token_ids: Mapping[str, int], vocab_size: int) -> dict[str, int]:
  """The tokenizer's ids; a missing one keeps JanusConfig's default only if it is in vocab."""
  ids = {f: token_ids[f] for f in TOKEN_FIELDS if token_ids.get(f) is not None}
  for field in [f for f in TOKEN_FIELDS if f not in ids]:
    default = getattr(JanusConfig, field)   # the dataclass default
    if not 0 <= default < vocab_size:
      raise ValueError(f"the tokenizer gives no {field} and JanusConfig's default {default} "
                       f"is outside the vocabulary of {vocab_size}")
  return ids
