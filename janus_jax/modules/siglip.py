"""SigLIP ViT understanding encoder (SigLIP-L/16@384 for the released models).

Patch embedding (conv k=s=patch) + learned position embedding, N pre-norm blocks
(exact GELU, no LayerScale), final LayerNorm; the full token sequence is the output —
no class token and no pooling head (JANUS.md §2.1). Letters: B batch, P patches,
W width, N heads, H head dim, F MLP width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from janus_jax.config import VisionConfig
from janus_jax.modules.layers import (Dtype, LayerNorm, Linear, default_init, dense, gelu,
                                      maybe_remat)


class VisionAttention(nn.Module):
  """Bidirectional multi-head self-attention with biases. [B, P, W] -> [B, P, W]."""
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    n, w = cfg.num_heads, cfg.width
    h = w // n

    def p(name, shape, names, init=default_init):
      return self.param(name, nn.with_logical_partitioning(init, names), shape,
                        self.param_dtype).astype(self.dtype)

    zeros = nn.initializers.zeros
    q = dense(x, p("q", (w, n, h), ("embed", "heads", "head_dim")))      # [B, P, N, H]
    k = dense(x, p("k", (w, n, h), ("embed", "heads", "head_dim")))
    v = dense(x, p("v", (w, n, h), ("embed", "heads", "head_dim")))
    q = q + p("q_bias", (n, h), ("heads", "head_dim"), zeros)
    k = k + p("k_bias", (n, h), ("heads", "head_dim"), zeros)
    v = v + p("v_bias", (n, h), ("heads", "head_dim"), zeros)
    logits = jnp.einsum("BPNH,BQNH->BNPQ", q, k).astype(jnp.float32) * h ** -0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("BNPQ,BQNH->BPNH", probs, v)
    wo = p("o", (n, h, w), ("heads", "head_dim", "embed")).reshape(n * h, w)
    out = dense(out.reshape(*out.shape[:2], n * h), wo)
    return out + p("o_bias", (w,), ("embed",), zeros)


class VisionBlock(nn.Module):
  """x + attn(LN1(x)); x + mlp(LN2(x)). Scanned over layers (carry x, no outputs)."""
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + VisionAttention(cfg, name="attn", **kw)(LayerNorm(cfg.layer_norm_eps, name="norm1", **kw)(x))
    h = LayerNorm(cfg.layer_norm_eps, name="norm2", **kw)(x)
    h = gelu(Linear(cfg.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(h))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    x = x + Linear(cfg.width, ("mlp", "embed"), name="fc2", **kw)(h)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class SigLIP(nn.Module):
  """pixels [B, S, S, 3] float in [-1, 1] (NHWC, S = image_size) -> [B, P, W] tokens."""
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_unroll: int = 1

  @nn.compact
  def __call__(self, pixels):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, height, width, c = pixels.shape
    if (height, width) != (cfg.image_size, cfg.image_size):
      raise ValueError(f"SigLIP expects {cfg.image_size}x{cfg.image_size} images, got "
                       f"{height}x{width}; resize with the processor first.")
    s = cfg.patch_size
    g = cfg.image_size // s
    # A stride-s conv with an s x s kernel is a matmul over non-overlapping patches.
    patches = pixels.astype(self.dtype).reshape(b, g, s, g, s, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, g * g, s * s * c)
    kernel = self.param("patch_kernel", nn.with_logical_partitioning(
        default_init, (None, None, None, "embed")), (s, s, c, cfg.width), self.param_dtype)
    bias = self.param("patch_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (cfg.width,), self.param_dtype)
    x = dense(patches, kernel.astype(self.dtype).reshape(s * s * c, cfg.width))   # [B, P, W]
    pos = self.param("pos_embed", nn.with_logical_partitioning(default_init, (None, "embed")),
                     (g * g, cfg.width), self.param_dtype)
    x = x + bias.astype(self.dtype) + pos.astype(self.dtype)[None]

    block = maybe_remat(VisionBlock, self.remat_policy)
    x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(nn.broadcast,), length=cfg.num_layers,
                   unroll=min(self.scan_unroll, cfg.num_layers),
                   metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="blocks", **kw)(x, None)
    return LayerNorm(cfg.layer_norm_eps, name="final_norm", **kw)(x)
