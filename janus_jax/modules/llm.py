"""The language model: LLaMA / DeepSeek-LLM decoder with a static-shape KV cache.

Einsum letters: B batch, T query time, S key time (cache slots), D model width,
N query heads, K kv heads, G = N / K query heads per kv head, H head dim, F MLP width,
V vocabulary, L layers.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from janus_jax.config import LLMConfig
from janus_jax.modules.layers import (Dtype, Embed, Linear, RMSNorm, default_init, maybe_remat)

# A large finite negative instead of -inf: fully masked rows (left padding) then give a
# uniform distribution instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

Cache = dict[str, jax.Array]   # {"k": [L, B, S, K, H], "v": [L, B, S, K, H]}


def init_cache(config: LLMConfig, batch: int, length: int, dtype=jnp.float32) -> Cache:
  """An empty KV cache of `length` slots: {"k", "v"} each [L, B, S, K, H]."""
  shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def default_positions(attention_mask: jax.Array) -> jax.Array:
  """Positions that skip left padding: cumsum(mask) - 1, clipped at 0. [B, T] int32."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, HF "rotate_half" convention (halves, not interleaved pairs).

  x: [B, T, heads, H]; positions: [B, T] int. Angles are computed in float32.
  """
  head_dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]    # [B, T, 1, H]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin


def attention_mask_for(key_mask: jax.Array, query_slots: jax.Array,
                       key_segments: jax.Array | None = None,
                       query_segments: jax.Array | None = None) -> jax.Array:
  """Causal attention mask over cache slots. [B, T, S] bool.

  key_mask: [B, S] 1 where a slot holds a real token; query_slots: [T] or [B, T] slot
  index of each query. With segment ids ([B, S] and [B, T]) attention is also
  restricted to the same segment (block-diagonal causal, for packed rows).
  """
  slots = jnp.arange(key_mask.shape[-1])
  query_slots = jnp.broadcast_to(query_slots, (key_mask.shape[0],) + query_slots.shape[-1:])
  mask = (slots[None, None, :] <= query_slots[:, :, None]) & key_mask[:, None, :].astype(bool)
  if key_segments is not None:
    mask &= query_segments[:, :, None] == key_segments[:, None, :]
  return mask


class Attention(nn.Module):
  """Multi-head / grouped-query attention with RoPE and an optional KV cache."""
  config: LLMConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask, kv_cache=None, cache_index=None):
    """x [B, T, D]; positions [B, T]; mask [B, T, S] bool.

    kv_cache: None (S = T) or (k, v) each [B, S, K, H] for this layer; the new keys and
    values are written at slots cache_index .. cache_index + T. Returns
    (y [B, T, D], updated (k, v) or None).
    """
    cfg = self.config
    n, k_heads, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, x.shape[-1]
    p = lambda name, shape, names: self.param(
        name, nn.with_logical_partitioning(default_init, names), shape, self.param_dtype
    ).astype(self.dtype)
    wq = p("q", (d, n, h), ("embed", "heads", "head_dim"))
    wk = p("k", (d, k_heads, h), ("embed", "kv_heads", "head_dim"))
    wv = p("v", (d, k_heads, h), ("embed", "kv_heads", "head_dim"))
    wo = p("o", (n, h, d), ("heads", "head_dim", "embed"))

    x = x.astype(self.dtype)
    q = jnp.einsum("BTD,DNH->BTNH", x, wq)
    k = jnp.einsum("BTD,DKH->BTKH", x, wk)
    v = jnp.einsum("BTD,DKH->BTKH", x, wv)
    q = apply_rope(q, positions, cfg.rope_theta)
    k = apply_rope(k, positions, cfg.rope_theta)

    new_cache = None
    if kv_cache is not None:
      k_cache, v_cache = kv_cache
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
      new_cache = (k, v)
      k, v = k.astype(self.dtype), v.astype(self.dtype)

    b, t = q.shape[:2]
    q = q.reshape(b, t, k_heads, n // k_heads, h)                      # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k).astype(jnp.float32) * h ** -0.5
    logits = jnp.where(mask[:, None, None], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)         # [B, K, G, T, S]
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
    return jnp.einsum("BTNH,NHD->BTD", out, wo), new_cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases. [B, T, D] -> [B, T, D]."""
  config: LLMConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    f = self.config.intermediate_size
    gate = Linear(f, ("embed", "mlp"), name="gate", **kw)(x)
    up = Linear(f, ("embed", "mlp"), name="up", **kw)(x)
    hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return Linear(x.shape[-1], ("mlp", "embed"), name="down", **kw)(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: LLMConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, kv_cache, positions, mask, cache_index):
    """Scanned over layers: carry x [B, T, D]; kv_cache is this layer's (k, v) or None."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.config.rms_norm_eps
    h, kv_cache = Attention(self.config, name="attn", **kw)(
        RMSNorm(eps, name="attn_norm", **kw)(x), positions, mask, kv_cache, cache_index)
    x = x + h
    x = x + MLP(self.config, name="mlp", **kw)(RMSNorm(eps, name="mlp_norm", **kw)(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, kv_cache


class LLM(nn.Module):
  """Embedding table, scanned decoder layers, final RMSNorm and the untied lm_head."""
  config: LLMConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"

  def setup(self):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
    layer = maybe_remat(DecoderLayer, self.remat_policy)
    self.layers = nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, **kw)
    self.final_norm = RMSNorm(cfg.rms_norm_eps, **kw)
    self.lm_head = Linear(cfg.vocab_size, ("embed", "vocab"), use_bias=False, **kw)

  def embed_tokens(self, ids):
    """ids [B, T] int -> [B, T, D] compute dtype."""
    return self.embed(ids)

  def __call__(self, embeds, positions, key_mask, cache: Cache | None = None,
               cache_index: Any = 0, segment_ids=None):
    """Runs the decoder on input embeddings.

    embeds [B, T, D]; positions [B, T] int; key_mask [B, S] (S = T without a cache, the
    cache length with one): 1 where the slot holds a real token. With a cache the T new
    tokens are written at slots cache_index .. cache_index + T - 1 (a traced int is fine).
    segment_ids [B, T] (no cache only) restricts attention to equal ids.
    Returns (final-normed hidden [B, T, D] compute dtype, updated cache or None).
    """
    t = embeds.shape[1]
    query_slots = cache_index + jnp.arange(t)
    mask = attention_mask_for(key_mask, query_slots, segment_ids, segment_ids)
    kv = None if cache is None else (cache["k"], cache["v"])
    x = nn.with_logical_constraint(embeds.astype(self.dtype), ("batch", "length", "embed"))
    x, kv = self.layers(x, kv, positions, mask, cache_index)
    new_cache = None if cache is None else {"k": kv[0], "v": kv[1]}
    return self.final_norm(x), new_cache

  def logits(self, hidden):
    """hidden [..., D] -> text logits [..., V] float32."""
    return self.lm_head(hidden).astype(jnp.float32)
