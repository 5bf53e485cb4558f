"""Tiny random transformers Janus models: the reference the Flax code is compared with.

Every parameter, norms included, is perturbed away from its initial value so that a
swapped scale/bias or a missed transpose cannot go unnoticed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Special token ids used by every tiny reference model.
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3, image_token_id=5, boi_token_id=6,
              eoi_token_id=7)


@dataclasses.dataclass(frozen=True)
class Variant:
  """Sizes of one tiny reference config."""
  name: str
  vocab: int = 300
  hidden: int = 64
  intermediate: int = 96
  layers: int = 2
  heads: int = 4
  kv_heads: int = 2
  head_dim: int = 16
  vision_image: int = 32
  vision_patch: int = 8
  vision_width: int = 32
  vision_layers: int = 2
  vision_heads: int = 2
  vq_mult: tuple[int, ...] = (1, 2)
  vq_res_blocks: int = 1
  vq_codebook: int = 64

  @property
  def num_image_tokens(self) -> int:
    return (self.vision_image // self.vision_patch) ** 2

  @property
  def vq_image(self) -> int:
    # transformers ties the VQ token grid to the SigLIP patch grid.
    return self.vision_image // self.vision_patch * 2 ** (len(self.vq_mult) - 1)


# GQA (4 query heads over 2 kv heads) at 32 px, and plain MHA with another image size.
GQA = Variant("gqa")
MHA = Variant("mha", vocab=320, hidden=96, intermediate=160, layers=3, heads=6, kv_heads=6,
              vision_image=24, vision_patch=4, vision_width=64, vision_layers=3, vision_heads=4,
              vq_mult=(1, 1, 2), vq_res_blocks=2, vq_codebook=128)
VARIANTS = (GQA, MHA)


def hf_config(v: Variant):
  from transformers import JanusConfig
  return JanusConfig(
      text_config=dict(model_type="llama", vocab_size=v.vocab, hidden_size=v.hidden,
                       intermediate_size=v.intermediate, num_hidden_layers=v.layers,
                       num_attention_heads=v.heads, num_key_value_heads=v.kv_heads,
                       head_dim=v.head_dim, max_position_embeddings=512, rms_norm_eps=1e-6,
                       bos_token_id=TOKENS["bos_token_id"], eos_token_id=TOKENS["eos_token_id"],
                       pad_token_id=TOKENS["pad_token_id"], tie_word_embeddings=False),
      vision_config=dict(hidden_size=v.vision_width, num_hidden_layers=v.vision_layers,
                         num_attention_heads=v.vision_heads, image_size=v.vision_image,
                         patch_size=v.vision_patch, projection_dim=v.hidden, mlp_ratio=2.0,
                         num_image_tokens=v.num_image_tokens),
      vq_config=dict(embed_dim=8, num_embeddings=v.vq_codebook, base_channels=32,
                     channel_multiplier=list(v.vq_mult), num_res_blocks=v.vq_res_blocks,
                     latent_channels=32, projection_dim=v.hidden, image_token_embed_dim=v.hidden),
      image_token_id=TOKENS["image_token_id"], tie_word_embeddings=False)


def build_hf_model(v: Variant, seed: int = 0):
  """A float32, eval-mode JanusForConditionalGeneration with every parameter randomised."""
  import torch
  from transformers import JanusForConditionalGeneration
  torch.manual_seed(seed)
  model = JanusForConditionalGeneration(hf_config(v)).float().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:   # norm scales, biases
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      elif "embed" in name or "quantize" in name:
        p.copy_(noise * (1.0 if "quantize" in name else 0.5))
      else:             # matrices and conv kernels: keep activations O(1)
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(noise / np.sqrt(fan_in))
  return model


def save_hf_model(model, directory) -> str:
  """save_pretrained plus a tokenizer.json holding the special tokens at TOKENS' ids."""
  from tests.tiny_tokenizer import write_tokenizer
  model.save_pretrained(str(directory))
  write_tokenizer(str(directory), model.config.text_config.vocab_size)
  return str(directory)


def to_nhwc(x) -> np.ndarray:
  return np.asarray(x.detach().numpy()).transpose(0, 2, 3, 1)
