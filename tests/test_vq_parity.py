"""Parity of janus_jax's VQ tokenizer with transformers' JanusVQVAE (float32, CPU).

HF's encoder/decoder are the reference for the convolutions; the quantizer reference is the
ORIGINAL Janus one (L2-normalise z and codebook, argmin), recomputed in torch, because HF's
`quantize.forward` skips the normalisation (JANUS.md §2.6).
"""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from flax.core import meta
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

from janus_jax.config import VQConfig
from janus_jax.modules.vq import VQModel

TOL = 1e-4
CONFIGS = {
    "two_levels": VQConfig(image_size=16, codebook_size=64, codebook_dim=8, base_channels=32,
                           channel_mult=(1, 2), num_res_blocks=1, z_channels=32),
    "three_levels": VQConfig(image_size=24, codebook_size=128, codebook_dim=4, base_channels=32,
                             channel_mult=(1, 1, 2), num_res_blocks=2, z_channels=64),
}


def hf_config(cfg: VQConfig) -> JanusVQVAEConfig:
  return JanusVQVAEConfig(
      embed_dim=cfg.codebook_dim, num_embeddings=cfg.codebook_size, latent_channels=cfg.z_channels,
      in_channels=cfg.in_channels, out_channels=cfg.in_channels, base_channels=cfg.base_channels,
      channel_multiplier=list(cfg.channel_mult), num_res_blocks=cfg.num_res_blocks,
      num_patches=cfg.grid_size, dropout=0.0)


def build_hf(cfg: VQConfig, seed: int = 0) -> JanusVQVAE:
  """HF model with O(1)-scale random weights, random GroupNorm affines and codebook norms."""
  torch.manual_seed(seed)
  model = JanusVQVAE(hf_config(cfg)).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, fan_in ** -0.5)
        module.bias.normal_(0.0, 0.1)
      elif isinstance(module, torch.nn.GroupNorm):
        module.weight.normal_(1.0, 0.3)
        module.bias.normal_(0.0, 0.3)
    # Rows of very different norms so a missing L2 normalisation changes the results.
    emb = model.quantize.embedding.weight
    emb.normal_().mul_(torch.exp(torch.randn(emb.shape[0], 1)))
  return model


def hf_to_flax(state_dict) -> dict:
  """HF JanusVQVAE state_dict -> nested janus_jax param dict (what the converter must do)."""
  flat = {}
  for key, value in state_dict.items():
    value = value.detach().cpu().numpy()
    key = re.sub(r"\.(down|up)\.(\d+)\.(block|attn)\.(\d+)\.", r".\1_\2.\3_\4.", key)
    key = re.sub(r"\.(down|up)\.(\d+)\.(downsample|upsample)\.conv\.", r".\1_\2.\3.", key)
    *path, leaf = key.split(".")
    if key == "quantize.embedding.weight":
      path, leaf = ["quantize"], "embedding"
    elif "norm" in path[-1]:
      leaf = {"weight": "scale", "bias": "bias"}[leaf]
    elif leaf == "weight":  # conv OIHW -> HWIO
      leaf, value = "kernel", value.transpose(2, 3, 1, 0)
    flat[tuple(path) + (leaf,)] = jnp.asarray(value)
  return traverse_util.unflatten_dict(flat)


def original_janus_codes(latents: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
  """The original Janus/LlamaGen quantizer: latents [B,g,g,d] -> codes [B, g*g]."""
  z = F.normalize(latents.reshape(-1, latents.shape[-1]), dim=-1)
  e = F.normalize(codebook, dim=-1)
  d = (z ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * z @ e.T
  return d.argmin(1).reshape(latents.shape[0], -1).numpy()


@functools.lru_cache(maxsize=None)
def setup(name: str):
  cfg = CONFIGS[name]
  hf = build_hf(cfg)
  params = hf_to_flax(hf.state_dict())
  model = VQModel(cfg)
  fns = {m: jax.jit(functools.partial(model.apply, method=getattr(VQModel, m)))
         for m in ("encode", "encode_latents", "decode")}
  rng = np.random.default_rng(1)
  pixels = rng.uniform(-1, 1, (2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
  return cfg, hf, {"params": params}, fns, pixels


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_param_tree_matches(name):
  cfg, _, variables, _, pixels = setup(name)
  abstract = jax.eval_shape(VQModel(cfg).init, jax.random.key(0), pixels)
  expected = {k: v.shape for k, v in traverse_util.flatten_dict(meta.unbox(abstract["params"])).items()}
  got = {k: v.shape for k, v in traverse_util.flatten_dict(variables["params"]).items()}
  assert got == expected


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_latents(name):
  cfg, hf, variables, fns, pixels = setup(name)
  with torch.no_grad():
    ref = nchw_to_nhwc(hf.quant_conv(hf.encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2))))
  got = np.asarray(fns["encode_latents"](variables, pixels))
  assert got.shape == (2, cfg.grid_size, cfg.grid_size, cfg.codebook_dim)
  diff = np.abs(got - ref).max()
  print(f"{name}: encode_latents max|diff| {diff:.2e} (max|ref| {np.abs(ref).max():.2f})")
  assert diff <= TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_codes_match_original_quantizer(name):
  cfg, hf, variables, fns, pixels = setup(name)
  with torch.no_grad():
    latents = hf.quant_conv(hf.encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2)))
    ref = original_janus_codes(latents.permute(0, 2, 3, 1), hf.quantize.embedding.weight)
  got = np.asarray(fns["encode"](variables, pixels))
  assert got.dtype == np.int32 and got.shape == (2, cfg.num_tokens)
  assert len(np.unique(ref)) > 1  # a degenerate all-same-code case would prove little
  np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode(name):
  cfg, hf, variables, fns, _ = setup(name)
  codes = np.random.default_rng(2).integers(0, cfg.codebook_size, (2, cfg.num_tokens))
  with torch.no_grad():
    ref = nchw_to_nhwc(hf.decode(torch.from_numpy(codes)))
  got = np.asarray(fns["decode"](variables, jnp.asarray(codes, jnp.int32)))
  assert got.shape == (2, cfg.image_size, cfg.image_size, 3)
  diff = np.abs(got - ref).max()
  print(f"{name}: decode max|diff| {diff:.2e} (max|ref| {np.abs(ref).max():.2f})")
  assert diff <= TOL


def test_differs_from_hf_unnormalised_quantizer():
  """HF's encode() codes differ from ours on a non-unit-norm codebook, agree on a unit-norm one."""
  name = "two_levels"
  _, hf, variables, fns, pixels = setup(name)
  x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
  ours = np.asarray(fns["encode"](variables, pixels))
  with torch.no_grad():
    hf_codes = hf.encode(x).image_tokens.reshape(ours.shape).numpy()
  assert (hf_codes != ours).any()

  unit = F.normalize(hf.quantize.embedding.weight.detach(), dim=-1)
  unit_params = {**variables["params"], "quantize": {"embedding": jnp.asarray(unit.numpy())}}
  ours_unit = np.asarray(fns["encode"]({"params": unit_params}, pixels))
  original = hf.quantize.embedding.weight.detach().clone()
  try:
    with torch.no_grad():
      hf.quantize.embedding.weight.copy_(unit)
      hf_unit = hf.encode(x).image_tokens.reshape(ours.shape).numpy()
  finally:
    with torch.no_grad():
      hf.quantize.embedding.weight.copy_(original)
  np.testing.assert_array_equal(ours_unit, hf_unit)
