"""Writers of tiny PyTorch checkpoints in every released layout and file format.

From one random transformers Janus: the transformers layout (safetensors via
save_pretrained, or torch `.bin`), and the original DeepSeek layout derived with the
converter's reverse mapping (fused qkv, unsqueezed pos_embed) plus the `attn_pool.*`
weights and `codebook_used` buffer that real checkpoints carry and that must be ignored.
"""
from __future__ import annotations

import json
import os

import numpy as np

from tests import reference as ref
from tests.tiny_tokenizer import write_tokenizer


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def _save_tensors(tensors: dict, directory: str, fmt: str, shards: int, torch_dtype=None):
  """Writes tensors as safetensors or torch .bin, split into `shards` files with an index."""
  import torch
  keys = sorted(tensors)
  groups = [keys[i::shards] for i in range(shards)]
  if fmt == "safetensors":
    from safetensors.torch import save_file
    names = (["model.safetensors"] if shards == 1 else
             [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)])
    index = "model.safetensors.index.json"
  else:
    save_file = lambda sd, path: torch.save(sd, path)
    names = (["pytorch_model.bin"] if shards == 1 else
             [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)])
    index = "pytorch_model.bin.index.json"
  weight_map = {}
  for name, group in zip(names, groups):
    sd = {}
    for k in group:
      t = torch.from_numpy(np.ascontiguousarray(tensors[k]))
      sd[k] = t.to(torch_dtype) if torch_dtype is not None else t
    save_file(sd, os.path.join(directory, name))
    weight_map.update({k: name for k in group})
  if shards > 1:
    with open(os.path.join(directory, index), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)


def write_hf(model, directory: str, fmt: str = "safetensors", shards: int = 1,
             torch_dtype=None) -> str:
  """transformers layout: config.json + weights + tokenizer.json."""
  os.makedirs(directory, exist_ok=True)
  model.config.save_pretrained(directory)
  _save_tensors(state_dict_numpy(model), directory, fmt, shards, torch_dtype)
  write_tokenizer(directory, model.config.text_config.vocab_size)
  return directory


def deepseek_tensors(model) -> dict[str, np.ndarray]:
  """The original-layout state dict of a transformers Janus, with the unused extras."""
  from convert.deepseek import hf_tensors_to_deepseek
  tensors = hf_tensors_to_deepseek(state_dict_numpy(model))
  rng = np.random.default_rng(0)
  width = model.config.vision_config.hidden_size
  tower = "vision_model.vision_tower"
  tensors[f"{tower}.attn_pool.latent"] = rng.normal(size=(1, 1, width)).astype(np.float32)
  tensors[f"{tower}.attn_pool.q.weight"] = rng.normal(size=(width, width)).astype(np.float32)
  tensors[f"{tower}.attn_pool.kv.weight"] = rng.normal(size=(2 * width, width)).astype(np.float32)
  tensors["gen_vision_model.quantize.codebook_used"] = np.zeros(65536, np.float32)
  return tensors


def write_deepseek(model, directory: str, fmt: str = "bin", shards: int = 1,
                   torch_dtype=None) -> str:
  """Original DeepSeek layout: multi_modality config.json + weights + tokenizer.json."""
  from convert.deepseek import deepseek_config_dict
  from convert.hf import config_from_hf
  os.makedirs(directory, exist_ok=True)
  config = config_from_hf(model.config.to_dict(), ref.TOKENS)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(deepseek_config_dict(config), f)
  _save_tensors(deepseek_tensors(model), directory, fmt, shards, torch_dtype)
  write_tokenizer(directory, config.llm.vocab_size)
  return directory
