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
from janus_jax.modules.layers import (Dtype, Embed, Linear, RMSNorm, default_init, dense,
                                      maybe_remat)

# A large finite negative instead of -inf: fully masked rows (left padding) then give a
# uniform distribution instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

Cache = dict[str, jax.Array]   # {"k": [L, B, K, S, H], "v": [L, B, K, S, H]}

# Logical axis names of the cache arrays (for sharding constraints).
CACHE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")


def init_cache(config: LLMConfig, batch: int, length: int, dtype=jnp.float32) -> Cache:
  """An empty KV cache of `length` slots: {"k", "v"} each [L, B, K, S, H].

  Heads come before slots so that one head's keys are contiguous: attention reads them
  with batched matrix-vector products and no transposed copy of the cache.
  """
  shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
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
  def __call__(self, x, positions, mask, kv_cache=None, cache_index=None, layer=None):
    """x [B, T, D]; positions [B, T]; mask [B, T, S] bool.

    kv_cache: None (S = T); with `layer` (a traced int) the whole stack (k, v) each
    [L, B, K, S, H]; with layer None this layer's own cache as head groups, a tuple of
    (k, v) each [B, K / groups, S, H]. The new keys and values are written in place at
    slots cache_index .. cache_index + T - 1.
    Returns (y [B, T, D], updated (k, v) or None).
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
    q, k, v = dense(x, wq), dense(x, wk), dense(x, wv)       # [B, T, heads, H]
    q = apply_rope(q, positions, cfg.rope_theta)
    k = apply_rope(k, positions, cfg.rope_theta)

    b, t = q.shape[:2]
    q = q.reshape(b, t, k_heads, n // k_heads, h)                      # [B, T, K, G, H]
    new_cache = None
    if kv_cache is None:
      out = _attend(q, k, v, mask, "BSKH", self.dtype)
    elif layer is not None:
      # The stack [L, B, K, S, H], carried through the layer loop and written and read in
      # place: no per-layer copy of the cache goes in or out of the loop.
      k_cache, v_cache = kv_cache
      start = (layer, 0, 0, cache_index, 0)
      k_cache = jax.lax.dynamic_update_slice(
          k_cache, k.transpose(0, 2, 1, 3)[None].astype(k_cache.dtype), start)
      v_cache = jax.lax.dynamic_update_slice(
          v_cache, v.transpose(0, 2, 1, 3)[None].astype(v_cache.dtype), start)
      new_cache = (k_cache, v_cache)
      k = jax.lax.dynamic_index_in_dim(k_cache, layer, keepdims=False)
      v = jax.lax.dynamic_index_in_dim(v_cache, layer, keepdims=False)
      out = _attend(q, k, v, mask, "BKSH", self.dtype)
    else:
      out, new_cache = _attend_groups(q, k, v, kv_cache, mask, cache_index, self.dtype)
    # One flat [B*T, N*H] x [N*H, D] product (`dense`): contracting (N, H) as two dims lets
    # XLA pick an order that transposes (copies) the weight on every call.
    return dense(out.reshape(b, t, n * h), wo.reshape(n * h, d)), new_cache


def _attend_groups(q, k, v, kv_cache, mask, cache_index, dtype):
  """Attention over one layer's own cache, a tuple of head groups ((k, v) each
  [B, K / groups, S, H]); the new k, v [B, T, K, H] are written at cache_index first.

  Each group is an independent pair of matrix-vector products, which XLA:CPU runs
  concurrently on different cores. -> (out [B, T, K, G, H], updated cache).
  """
  width = k.shape[2] // len(kv_cache)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)             # [B, K, T, H]
  new_cache = []
  for g, (k_cache, v_cache) in enumerate(kv_cache):   # all writes first, then all reads
    heads = slice(g * width, (g + 1) * width)
    start = (0, 0, cache_index, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k[:, heads].astype(k_cache.dtype), start)
    v_cache = jax.lax.dynamic_update_slice(v_cache, v[:, heads].astype(v_cache.dtype), start)
    new_cache.append((k_cache, v_cache))
  outs = [_attend(q[:, :, g * width:(g + 1) * width], k_cache, v_cache, mask, "BKSH", dtype)
          for g, (k_cache, v_cache) in enumerate(new_cache)]
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return out, tuple(new_cache)


def _attend(q, k, v, mask, kv_layout: str, dtype):
  """Softmax attention. q [B, T, K, G, H]; k, v in kv_layout ("BSKH" or "BKSH");
  mask [B, T, S] bool -> [B, T, K, G, H]. Logits and softmax in float32."""
  logits = jnp.einsum(f"BTKGH,{kv_layout}->BKGTS", q, k.astype(dtype))
  logits = logits.astype(jnp.float32) * q.shape[-1] ** -0.5
  logits = jnp.where(mask[:, None, None], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)               # [B, K, G, T, S]
  return jnp.einsum(f"BKGTS,{kv_layout}->BTKGH", probs, v.astype(dtype))


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
  def __call__(self, carry, layer, positions, mask, cache_index):
    """Scanned over layers: carry (x [B, T, D], the whole KV cache (k, v) or None);
    layer: this layer's index (scanned), used to address the cache."""
    x, kv_cache = carry
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.config.rms_norm_eps
    h, kv_cache = Attention(self.config, name="attn", **kw)(
        RMSNorm(eps, name="attn_norm", **kw)(x), positions, mask, kv_cache, cache_index, layer)
    x = x + h
    x = x + MLP(self.config, name="mlp", **kw)(RMSNorm(eps, name="mlp_norm", **kw)(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, kv_cache), None


class LLM(nn.Module):
  """Embedding table, scanned decoder layers, final RMSNorm and the untied lm_head."""
  config: LLMConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_unroll: int = 1

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
        unroll=min(self.scan_unroll, cfg.num_layers),
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
    layer_ids = jnp.arange(self.config.num_layers, dtype=jnp.int32)
    (x, kv), _ = self.layers((x, kv), layer_ids, positions, mask, cache_index)
    new_cache = None if cache is None else {"k": kv[0], "v": kv[1]}
    return self.final_norm(x), new_cache

  def logits(self, hidden):
    """hidden [..., D] -> text logits [..., V] float32."""
    return self.lm_head(hidden).astype(jnp.float32)


# --- layer-by-layer decoding ---------------------------------------------------------------------
# On the CPU, a layer loop (`lax.scan`) over stacked weights copies every layer's weights (and
# its slab of the KV cache) out of the stack on every call: XLA:CPU's matmuls cannot read a
# dynamic slice in place. For token-by-token decoding that doubles the memory traffic. These
# helpers run the same layers unrolled over per-layer arrays instead: the weights are sliced
# out of the stack once per compiled program (a transient copy of the layer weights) and each
# layer keeps its own cache arrays, so a decode step reads every weight and cache byte once.
#
# XLA:CPU runs independent matrix products concurrently on different cores, so with
# `chains` > 1 each layer is also cut, tensor-parallel style, into `chains` independent
# chains of work: chain g takes the q, k, v columns of kv-head group g (fused into one
# matrix), attends over its own cache group and multiplies by its rows of the output
# projection; in the MLP it takes a block of the hidden width (gate and up columns, down
# rows). The chains' partial outputs are summed once per block, so a decode step has two
# joins per layer instead of one after every product. The arithmetic is `DecoderLayer`'s
# except for the order of the sums over heads and hidden width.
LayerCaches = list   # per layer: a tuple of head groups (k, v), each [B, K / groups, S, H]


def split_rows(w_t, parts: int) -> tuple:
  """A transposed kernel [out, in] (or any array) -> `parts` blocks along its first axis
  (for a kernel: of its output columns), as even as possible."""
  return tuple(jnp.array_split(w_t, parts, axis=0)) if parts > 1 else (w_t,)


def matmul(x, w_t, dtype):
  """x [..., in] times a transposed kernel w_t [out, in], both in `dtype` -> [..., out].

  Decode-only (no gradients). Computed as w_t · xᵀ -> [out, rows], then transposed: on
  XLA:CPU (Eigen and YNNPACK alike, AVX2) that form runs the few-row products of decoding
  about twice as fast as x · w (a chain of the mid-size config's layer products: 16 rows
  39 vs 78 ms, 2 rows 26 vs 46 ms). The optimization barrier keeps XLA from folding the
  transpose back into the product's output layout, which would undo the gain.
  """
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
  y_t = jax.lax.dot_general(w_t.astype(dtype), x2, (((1,), (1,)), ((), ())))
  return jax.lax.optimization_barrier(y_t).T.reshape(*lead, w_t.shape[0])


def matmul_parts(x, parts: tuple, dtype):
  """x [..., in] times the row blocks of one transposed kernel -> [..., out] (concatenated)."""
  ys = [matmul(x, w_t, dtype) for w_t in parts]
  return ys[0] if len(ys) == 1 else jnp.concatenate(ys, axis=-1)


def split_layers(layer_params, config: LLMConfig, chains: int = 0) -> list:
  """Stacked layer params (leading axis L) -> one entry per layer for `decode_layers`.

  chains 0: the layer's param tree as `DecoderLayer` takes it; chains >= 1 (a divisor of
  num_kv_heads): the layer cut into `chains` chains (see above), a list of dicts with 2-D
  transposed kernels ([out, in], for `matmul`): "qkv" [3 * width, D], "o" [D, width],
  "gate_up" [2 * F / chains, D] (gate rows, then up rows), "down" [D, F / chains].
  """
  if chains and config.num_kv_heads % chains:
    raise ValueError(f"chains={chains} does not divide num_kv_heads={config.num_kv_heads}.")
  out = []
  for i in range(config.num_layers):
    p = jax.tree.map(lambda a, i=i: a[i], layer_params)
    if chains:
      attn, mlp = p["attn"], p["mlp"]
      kv = config.num_kv_heads // chains
      q_heads = kv * (config.num_heads // config.num_kv_heads)
      d = attn["q"].shape[0]
      hidden = [jnp.array_split(mlp[name]["kernel"], chains, axis=a)
                for name, a in (("gate", 1), ("up", 1), ("down", 0))]
      parts = []
      for g in range(chains):
        q = attn["q"][:, g * q_heads:(g + 1) * q_heads]
        k, v = (attn[name][:, g * kv:(g + 1) * kv] for name in ("k", "v"))
        parts.append({"qkv": jnp.concatenate([w.reshape(d, -1) for w in (q, k, v)], axis=1).T,
                      "o": attn["o"][g * q_heads:(g + 1) * q_heads].reshape(-1, d).T,
                      "gate_up": jnp.concatenate([hidden[0][g], hidden[1][g]], axis=1).T,
                      "down": hidden[2][g].T})
      p = {"attn_norm": p["attn_norm"], "mlp_norm": p["mlp_norm"], "chains": parts}
    out.append(p)
  return out


def init_layer_caches(config: LLMConfig, batch: int, length: int, dtype=jnp.float32,
                      groups: int = 1) -> LayerCaches:
  """Empty per-layer KV caches of `length` slots, each layer's kv heads split into `groups`
  (a divisor of num_kv_heads) independent arrays: L tuples of `groups` (k, v) pairs."""
  if config.num_kv_heads % groups:
    raise ValueError(f"groups={groups} does not divide num_kv_heads={config.num_kv_heads}.")
  shape = (batch, config.num_kv_heads // groups, length, config.head_dim)
  return [tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(groups))
          for _ in range(config.num_layers)]


def _chained_layer(config: LLMConfig, p, x, positions, mask, cache, cache_index, dtype,
                   param_dtype):
  """`DecoderLayer` with a per-layer cache, on `split_layers(chains >= 1)` params; the
  cache's head groups are the chains'."""
  if len(cache) != len(p["chains"]):
    raise ValueError(f"the cache has {len(cache)} head groups, the layer "
                     f"{len(p['chains'])} chains; they must be equal.")
  group_heads = config.num_kv_heads // len(cache)
  per_kv, h = config.num_heads // config.num_kv_heads, config.head_dim
  norm = RMSNorm(config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
  b, t, _ = x.shape
  mm = lambda a, w: matmul(a, w, dtype)
  xn = norm.apply({"params": p["attn_norm"]}, x).astype(dtype)
  partial, new_cache = [], []
  for chain, (k_cache, v_cache) in zip(p["chains"], cache):
    q, k, v = jnp.split(mm(xn, chain["qkv"]),
                        [group_heads * per_kv * h, group_heads * (per_kv + 1) * h], axis=-1)
    q = apply_rope(q.reshape(b, t, group_heads * per_kv, h), positions, config.rope_theta)
    q = q.reshape(b, t, group_heads, per_kv, h)
    k = apply_rope(k.reshape(b, t, group_heads, h), positions, config.rope_theta)
    v = v.reshape(b, t, group_heads, h)
    start = (0, 0, cache_index, 0)
    k_cache = jax.lax.dynamic_update_slice(
        k_cache, k.transpose(0, 2, 1, 3).astype(k_cache.dtype), start)
    v_cache = jax.lax.dynamic_update_slice(
        v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype), start)
    new_cache.append((k_cache, v_cache))
    out = _attend(q, k_cache, v_cache, mask, "BKSH", dtype)           # [B, T, K/c, G, H]
    partial.append(mm(out.reshape(b, t, -1), chain["o"]))
  x = x + sum(partial[1:], partial[0])
  y = norm.apply({"params": p["mlp_norm"]}, x).astype(dtype)
  partial = []
  for c in p["chains"]:
    gate, up = jnp.split(mm(y, c["gate_up"]), 2, axis=-1)
    partial.append(mm(jax.nn.silu(gate) * up, c["down"]))
  x = x + sum(partial[1:], partial[0])
  return nn.with_logical_constraint(x, ("batch", "length", "embed")), tuple(new_cache)


def decode_layers(config: LLMConfig, layers: list, final_norm, embeds, positions, key_mask,
                  caches: LayerCaches, cache_index: Any = 0, dtype: Dtype = jnp.float32,
                  param_dtype: Dtype = jnp.float32):
  """`LLM.__call__` with a cache, layer by layer: the same computation, unrolled.

  layers: `split_layers` (either form); final_norm: the LLM's final_norm params;
  caches: `init_layer_caches`. Returns (final-normed hidden [B, T, D], updated caches).
  """
  t = embeds.shape[1]
  mask = attention_mask_for(key_mask, cache_index + jnp.arange(t))
  layer = DecoderLayer(config, dtype=dtype, param_dtype=param_dtype)
  x = nn.with_logical_constraint(embeds.astype(dtype), ("batch", "length", "embed"))
  new_caches = []
  for params, cache in zip(layers, caches):
    if "chains" in params:
      x, cache = _chained_layer(config, params, x, positions, mask, cache, cache_index, dtype,
                                param_dtype)
    else:
      (x, cache), _ = layer.apply({"params": params}, (x, cache), None, positions, mask,
                                  cache_index)
    new_caches.append(cache)
  norm = RMSNorm(config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
  return norm.apply({"params": final_norm}, x), new_caches
