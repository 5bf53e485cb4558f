"""Writes a random checkpoint shaped like a released Janus model, in the released format.

  python experiments/make_fake_checkpoint.py OUT [--preset janus-pro-7b]
      [--format bin|safetensors] [--shard-gb 10]

Original DeepSeek layout (`language_model.*`, fused `attn.qkv`, the unused `attn_pool.*`
and `codebook_used`), bfloat16, split into shards with an index like Janus-Pro-7B's
`pytorch_model-0000i-of-00002.bin`, plus the hub's config.json and a tokenizer.json
holding the special tokens. Used by bench_convert.py; needs torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Janus-Pro-7B's config.json as published (JANUS.md §1.2): the LLM sizes are left to
# transformers' LlamaConfig defaults.
PRO_7B_CONFIG = {
    "model_type": "multi_modality",
    "vision_config": {"cls": "CLIPVisionTower", "params": {
        "image_size": 384, "model_name": "siglip_large_patch16_384", "select_feature": "same",
        "select_layer": -1}},
    "aligner_config": {"cls": "MlpProjector", "params": {
        "depth": 2, "input_dim": 1024, "n_embed": 4096, "projector_type": "mlp_gelu"}},
    "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": 16384, "n_embed": 8}},
    "gen_aligner_config": {"cls": "MlpProjector", "params": {
        "depth": 2, "input_dim": 8, "n_embed": 4096, "projector_type": "mlp_gelu"}},
    "gen_head_config": {"cls": "vision_head", "params": {
        "image_token_embed": 4096, "image_token_size": 16384, "n_embed": 4096}},
    "language_config": {"max_position_embeddings": 16384, "model_type": "llama",
                        "num_hidden_layers": 30, "torch_dtype": "bfloat16", "vocab_size": 102400},
}


def deepseek_shapes(config) -> dict[str, tuple[int, ...]]:
  """Every tensor of the original layout (with the unused extras) and its shape."""
  from convert import mapping
  from convert.deepseek import hf_to_deepseek_name
  from convert.hf import flax_shapes
  shapes = flax_shapes(config)
  out = {}
  for rule in mapping.hf_rules(shapes):
    torch_shape = mapping.torch_shape(rule, shapes[rule.ours])
    names = ([rule.theirs.format(i=i) for i in range(shapes[rule.ours][0])] if rule.stacked
             else [rule.theirs])
    for hf_key in names:
      key = hf_to_deepseek_name(hf_key)
      if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
        out[key] = (3 * torch_shape[0],) + tuple(torch_shape[1:])
      elif key.endswith("pos_embed"):
        out[key] = (1,) + tuple(torch_shape)
      else:
        out[key] = tuple(torch_shape)
  w = config.vision.width
  tower = "vision_model.vision_tower.attn_pool"
  out.update({f"{tower}.latent": (1, 1, w), f"{tower}.q.weight": (w, w), f"{tower}.q.bias": (w,),
              f"{tower}.kv.weight": (2 * w, w), f"{tower}.kv.bias": (2 * w,),
              f"{tower}.proj.weight": (w, w), f"{tower}.proj.bias": (w,),
              f"{tower}.norm.weight": (w,), f"{tower}.norm.bias": (w,),
              f"{tower}.mlp.fc1.weight": (4 * w, w), f"{tower}.mlp.fc1.bias": (4 * w,),
              f"{tower}.mlp.fc2.weight": (w, 4 * w), f"{tower}.mlp.fc2.bias": (w,),
              "gen_vision_model.quantize.codebook_used": (65536,)})
  return out


def write_tokenizer(directory: str, config) -> None:
  """A word-level tokenizer.json whose vocabulary holds the special tokens at the config's ids."""
  from tokenizers import Tokenizer, models
  from convert.hf import TOKEN_TAGS
  vocab = {f"<tok{i}>": i for i in range(config.llm.vocab_size)}
  for field, tag in TOKEN_TAGS.items():
    vocab.pop(f"<tok{getattr(config, field)}>")
    vocab[tag] = getattr(config, field)
  Tokenizer(models.WordLevel(vocab, unk_token="<tok0>")).save(os.path.join(directory, "tokenizer.json"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out")
  parser.add_argument("--preset", default="janus-pro-7b")
  parser.add_argument("--format", default="bin", choices=["bin", "safetensors"])
  parser.add_argument("--shard-gb", type=float, default=10.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  import torch
  from convert.deepseek import deepseek_config_dict
  from janus_jax.config import JanusConfig
  from tqdm import tqdm

  config = JanusConfig.preset(args.preset)
  os.makedirs(args.out, exist_ok=False)
  raw = PRO_7B_CONFIG if args.preset == "janus-pro-7b" else deepseek_config_dict(config)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump(raw, f, indent=2)
  write_tokenizer(args.out, config)

  shapes = deepseek_shapes(config)
  limit = int(args.shard_gb * 1e9)
  shards, current, size = [], [], 0
  for key, shape in shapes.items():   # in model order, like the released files
    nbytes = 2 * int(np.prod(shape))
    if current and size + nbytes > limit:
      shards.append(current)
      current, size = [], 0
    current.append(key)
    size += nbytes
  shards.append(current)
  ext = "bin" if args.format == "bin" else "safetensors"
  stem = "pytorch_model" if args.format == "bin" else "model"
  names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
  gen = torch.Generator().manual_seed(args.seed)
  weight_map = {}
  for name, keys in zip(names, shards):
    tensors = {}
    for key in tqdm(keys, desc=name, unit="tensor"):
      tensors[key] = (torch.randn(shapes[key], generator=gen, dtype=torch.float32) * 0.02).to(torch.bfloat16)
    path = os.path.join(args.out, name)
    if args.format == "bin":
      torch.save(tensors, path)
    else:
      from safetensors.torch import save_file
      save_file(tensors, path, metadata={"format": "pt"})
    weight_map.update({k: name for k in keys})
    del tensors
  index = f"{stem}.{ext}.index.json"
  with open(os.path.join(args.out, index), "w") as f:
    json.dump({"metadata": {"total_size": sum(2 * int(np.prod(s)) for s in shapes.values())},
               "weight_map": weight_map}, f, indent=2)
  total = sum(os.path.getsize(os.path.join(args.out, n)) for n in names)
  print(f"wrote {args.out}: {len(shapes)} tensors in {len(names)} {ext} shards, {total / 1e9:.2f} GB")


if __name__ == "__main__":
  main()
