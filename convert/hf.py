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


def hf_config_dict(config: JanusConfig) -> dict:
  """JanusConfig -> transformers' Janus config.json dict (loads with JanusConfig.from_dict)."""
  llm, vis, vq = config.llm, config.vision, config.vq
  if vq.grid_size != vis.image_size // vis.patch_size:
    raise ValueError(f"transformers' Janus needs the VQ token grid ({vq.grid_size}) to equal "
                     f"the SigLIP patch grid ({vis.image_size // vis.patch_size}).")
  if config.gen_head_dim != llm.hidden_size:
    raise ValueError(f"transformers' Janus needs gen_head_dim ({config.gen_head_dim}) equal to "
                     f"the LLM hidden size ({llm.hidden_size}); export with --layout deepseek.")
  return {
      "architectures": ["JanusForConditionalGeneration"],
      "model_type": "janus",
      "image_token_id": config.image_token_id,
      "tie_word_embeddings": False,
      "text_config": {
          "model_type": "llama", "vocab_size": llm.vocab_size, "hidden_size": llm.hidden_size,
          "intermediate_size": llm.intermediate_size, "num_hidden_layers": llm.num_layers,
          "num_attention_heads": llm.num_heads, "num_key_value_heads": llm.num_kv_heads,
          "head_dim": llm.head_dim, "rms_norm_eps": llm.rms_norm_eps,
          "rope_parameters": {"rope_theta": llm.rope_theta, "rope_type": "default"},
          "max_position_embeddings": llm.max_position_embeddings, "hidden_act": "silu",
          "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
          "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
          "pad_token_id": config.pad_token_id},
      "vision_config": {
          "model_type": "janus_vision_model", "hidden_size": vis.width,
          "num_hidden_layers": vis.num_layers, "num_attention_heads": vis.num_heads,
          "image_size": vis.image_size, "patch_size": vis.patch_size,
          "mlp_ratio": vis.mlp_dim / vis.width, "layer_norm_eps": vis.layer_norm_eps,
          "projection_dim": llm.hidden_size, "depth": 2, "hidden_act": "gelu",
          "num_image_tokens": vis.num_patches},
      "vq_config": {
          "model_type": "janus_vqgan", "embed_dim": vq.codebook_dim,
          "num_embeddings": vq.codebook_size, "base_channels": vq.base_channels,
          "channel_multiplier": list(vq.channel_mult), "num_res_blocks": vq.num_res_blocks,
          "latent_channels": vq.z_channels, "in_channels": vq.in_channels, "out_channels": 3,
          "num_patches": vq.grid_size, "projection_dim": llm.hidden_size,
          "image_token_embed_dim": llm.hidden_size, "num_hidden_layers": 2, "hidden_act": "gelu"},
  }
