"""Reading a transformers-format Janus directory (`JanusForConditionalGeneration.save_pretrained`).

`config_from_hf` translates transformers' config.json into our `JanusConfig`;
`load_hf` reads the safetensors weights (single file or sharded with an index) into
the Flax param tree through the rules of `convert.mapping`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from janus_jax.config import JanusConfig, LLMConfig, VisionConfig, VQConfig
from convert import mapping

# Tags whose ids the config needs; looked up in the tokenizer when it is present.
TOKEN_TAGS = {
    "bos_token_id": "<｜begin▁of▁sentence｜>",
    "eos_token_id": "<｜end▁of▁sentence｜>",
    "pad_token_id": "<｜▁pad▁｜>",
    "image_token_id": "<image_placeholder>",
    "boi_token_id": "<begin_of_image>",
    "eoi_token_id": "<end_of_image>",
}


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def tokenizer_ids(directory: str) -> dict[str, int]:
  """Special-token ids found in `directory/tokenizer.json` (empty if there is none)."""
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(path):
    return {}
  data = _read_json(path)
  vocab = dict(data.get("model", {}).get("vocab", {}) or {})
  vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
  return {field: vocab[tag] for field, tag in TOKEN_TAGS.items() if tag in vocab}


def special_token_ids(directory: str) -> dict[str, int]:
  """Token ids from generation_config.json, overridden by the tokenizer's vocabulary."""
  ids = {}
  path = os.path.join(directory, "generation_config.json")
  if os.path.exists(path):
    gen = _read_json(path)
    for field in ("bos_token_id", "eos_token_id", "pad_token_id", "boi_token_id"):
      if isinstance(gen.get(field), int):
        ids[field] = gen[field]
  ids.update(tokenizer_ids(directory))
  return ids


def config_from_hf(hf: dict[str, Any], token_ids: dict[str, int] | None = None,
                   **overrides) -> JanusConfig:
  """transformers' Janus config dict -> JanusConfig.

  Token ids: `token_ids` (from the tokenizer) win over the config's own fields.
  """
  text, vision, vq = hf["text_config"], hf["vision_config"], hf["vq_config"]
  rope = text.get("rope_parameters") or {}
  heads = text["num_attention_heads"]
  llm = LLMConfig(
      vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
      intermediate_size=text["intermediate_size"], num_layers=text["num_hidden_layers"],
      num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
      head_dim=text.get("head_dim") or text["hidden_size"] // heads,
      rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
      rms_norm_eps=text.get("rms_norm_eps", 1e-6),
      max_position_embeddings=text.get("max_position_embeddings", 16384))
  vis = VisionConfig(
      image_size=vision["image_size"], patch_size=vision["patch_size"],
      width=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
      num_heads=vision["num_attention_heads"],
      mlp_dim=int(vision["hidden_size"] * vision.get("mlp_ratio", 4.0)),
      layer_norm_eps=vision.get("layer_norm_eps", 1e-6))
  mult = tuple(vq["channel_multiplier"])
  grid = vq.get("num_patches") or vis.image_size // vis.patch_size
  vqc = VQConfig(
      image_size=grid * 2 ** (len(mult) - 1), codebook_size=vq["num_embeddings"],
      codebook_dim=vq["embed_dim"], base_channels=vq["base_channels"], channel_mult=mult,
      num_res_blocks=vq["num_res_blocks"], z_channels=vq["latent_channels"],
      in_channels=vq.get("in_channels", 3))
  ids = {"image_token_id": hf.get("image_token_id")}
  for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
    ids[field] = text.get(field)
  ids.update({k: v for k, v in (token_ids or {}).items() if v is not None})
  ids = {k: v for k, v in ids.items() if v is not None}
  return JanusConfig(llm=llm, vision=vis, vq=vqc, gen_head_dim=vq["projection_dim"],
                     **ids, **overrides)


_TIED = {"lm_head.weight": "model.language_model.embed_tokens.weight"}


class SafetensorsDir:
  """Lazy tensor access over the safetensors files of a directory (numpy, memory-mapped)."""

  def __init__(self, directory: str):
    from safetensors import safe_open
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
      weight_map = _read_json(index)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
      if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory}")
    self._handles = [safe_open(os.path.join(directory, f), framework="numpy") for f in files]
    self._where = {k: h for h in self._handles for k in h.keys()}

  def keys(self):
    return self._where.keys()

  def __call__(self, key: str) -> np.ndarray:
    return self._where[key].get_tensor(key)


def flax_shapes(config: JanusConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  import jax
  from flax.traverse_util import flatten_dict
  from janus_jax.model import abstract_params
  return {k: tuple(v.shape) for k, v in flatten_dict(abstract_params(config)).items()}


def load_hf(directory: str, config: JanusConfig | None = None, dtype=None):
  """Reads a transformers-format Janus checkpoint. Returns (JanusConfig, params dict)."""
  hf_config = _read_json(os.path.join(directory, "config.json"))
  if config is None:
    config = config_from_hf(hf_config, special_token_ids(directory))
  shapes = flax_shapes(config)
  rules = mapping.hf_rules(shapes)
  mapping.check_rules_cover(rules, shapes)
  tensors = SafetensorsDir(directory)
  get = tensors
  if "lm_head.weight" not in tensors.keys() and hf_config.get("tie_word_embeddings"):
    # A tied model saves only the embedding table; the lm_head is the same matrix.
    get = lambda key: tensors(_TIED.get(key, key))
  params = mapping.build_params(rules, shapes, get, dtype)
  return config, params
