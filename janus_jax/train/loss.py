"""The training loss: next-token cross-entropy through `lm_head` or `gen_head`, per position.

A batch (janus_jax/data/batch.py) says for every position which head scores it
(`target_head`), its target and its weight. The loss of a batch is
sum(weight · CE) / sum(weight) over all its positions; per-kind losses use the same
formula restricted to one data kind.

Memory: the text head has 102,400 classes, so float32 logits of a [B, T] batch would be
B·T·400 KB. Logits are computed chunk by chunk along T inside a rematerialised
`lax.scan`, so only one [B, C, V] chunk is ever live, in the backward pass too. Both
heads run on every position and the per-position CE is selected by `target_head`
(positions of one kind are interleaved in packed rows, so there is no static split);
the gen head is ~20x smaller than the text head, so the waste is the text head on
image positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from janus_jax.data.batch import HEAD_IMAGE, KINDS
from janus_jax.modules.layers import gelu


def text_logits(params, hidden, dtype):
  """lm_head: hidden [B, C, D] -> logits [B, C, V] float32 (float32 accumulation)."""
  kernel = params["llm"]["lm_head"]["kernel"].astype(dtype)
  return jnp.einsum("BCD,DV->BCV", hidden.astype(dtype), kernel,
                    preferred_element_type=jnp.float32)


def image_logits(params, hidden, dtype):
  """gen_head (Linear -> GELU -> Linear): hidden [B, C, D] -> logits [B, C, codebook] f32."""
  fc1, fc2 = params["gen_head"]["fc1"], params["gen_head"]["fc2"]
  x = jnp.einsum("BCD,DE->BCE", hidden.astype(dtype), fc1["kernel"].astype(dtype))
  x = gelu(x + fc1["bias"].astype(dtype))
  logits = jnp.einsum("BCE,EV->BCV", x, fc2["kernel"].astype(dtype),
                      preferred_element_type=jnp.float32)
  return logits + fc2["bias"].astype(jnp.float32)


def _cross_entropy(logits, targets):
  """logits [B, C, V] f32, targets [B, C] int (clipped into range) -> CE [B, C] f32."""
  targets = jnp.clip(targets, 0, logits.shape[-1] - 1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def _chunk_ce(params, hidden, targets, target_head, dtype):
  hidden = nn.with_logical_constraint(hidden, ("batch", "length", "embed"))
  text = nn.with_logical_constraint(text_logits(params, hidden, dtype),
                                    ("batch", "length", "vocab"))
  image = image_logits(params, hidden, dtype)
  return jnp.where(target_head == HEAD_IMAGE, _cross_entropy(image, targets),
                   _cross_entropy(text, targets))


def token_losses(params, hidden, targets, target_head, *, dtype=jnp.float32, chunk: int = 0):
  """Per-position CE under the head each position names.

  params: the (merged) Janus params, of which only lm_head and gen_head are read;
  hidden [B, T, D] final-normed LLM output; targets, target_head [B, T] int32.
  chunk: positions per logits chunk (0 or >= T: one chunk). Returns [B, T] float32.
  """
  b, t, d = hidden.shape
  if chunk <= 0 or chunk >= t:
    return _chunk_ce(params, hidden, targets, target_head, dtype)
  if t % chunk:
    raise ValueError(f"sequence length {t} is not a multiple of loss_chunk {chunk}; set "
                     "config.loss_chunk to a divisor of the sequence length (or 0).")
  n = t // chunk
  to_chunks = lambda x: jnp.swapaxes(x.reshape((b, n, chunk) + x.shape[2:]), 0, 1)
  # Remat: the backward pass recomputes each chunk's logits instead of storing them all.
  body = jax.checkpoint(lambda h, y, k: _chunk_ce(params, h, y, k, dtype))
  _, ce = jax.lax.scan(lambda carry, xs: (carry, body(*xs)), None,
                       (to_chunks(hidden), to_chunks(targets), to_chunks(target_head)))
  return jnp.swapaxes(ce, 0, 1).reshape(b, t)


def weighted_sums(ce, loss_weights, kind):
  """Sums that losses are made of, so that micro-batches can simply be added up.

  ce, loss_weights [B, T] float32; kind [B, T] int32. Returns a dict of float32 scalars:
  "loss_sum" = Σ w·CE, "weight" = Σ w, and "loss_sum/<kind>", "weight/<kind>" per kind.
  """
  weighted = jnp.where(loss_weights != 0, loss_weights * ce, 0.0)
  sums = {"loss_sum": weighted.sum(), "weight": loss_weights.sum()}
  for name, value in KINDS.items():
    is_kind = kind == value
    sums[f"loss_sum/{name}"] = jnp.where(is_kind, weighted, 0.0).sum()
    sums[f"weight/{name}"] = jnp.where(is_kind, loss_weights, 0.0).sum()
  return sums


def losses_from_sums(sums) -> dict:
  """"loss" and "loss/<kind>" (mean CE per unit weight; 0 where a kind has no weight)."""
  # A NaN weight (bad data) must show as a NaN loss, so test w != 0, not w > 0.
  safe_div = lambda a, w: jnp.where(w != 0, a / jnp.where(w != 0, w, 1.0), 0.0)
  out = {"loss": safe_div(sums["loss_sum"], sums["weight"])}
  for name in KINDS:
    out[f"loss/{name}"] = safe_div(sums[f"loss_sum/{name}"], sums[f"weight/{name}"])
  return out
