"""Janus: one LLM, two decoupled visual paths.

Understanding: pixels -> SigLIP -> aligner -> image features placed at the
`<image_placeholder>` positions of the text embeddings -> LLM -> lm_head.
Generation: image codes -> gen_embed -> gen_aligner -> LLM -> gen_head -> code logits;
codes <-> pixels through the VQ tokenizer. Pixels are NHWC floats in [-1, 1].
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from janus_jax.config import JanusConfig
from janus_jax.modules.layers import Embed, MlpProjector, dtype_of
from janus_jax.modules.llm import LLM, Cache, default_positions
from janus_jax.modules.siglip import SigLIP
from janus_jax.modules.vq import VQModel


def merge_image_features(text_embeds: jax.Array, image_embeds: jax.Array,
                         is_image: jax.Array) -> jax.Array:
  """Places image features, in order, at the image-token positions of each row.

  text_embeds [B, T, D]; image_embeds [B, M, D] (all images of a row, concatenated);
  is_image [B, T] bool. The k-th image position of a row receives image_embeds[b, k].
  A static-shape gather + where: no boolean-mask scatter, so it jits and shards.
  """
  index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_embeds.shape[1] - 1)
  gathered = jnp.take_along_axis(image_embeds, index[..., None], axis=1)
  return jnp.where(is_image[..., None], gathered.astype(text_embeds.dtype), text_embeds)


class Janus(nn.Module):
  """The whole model; call its methods through `apply(..., method=...)`."""
  config: JanusConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
    d = cfg.llm.hidden_size
    self.llm = LLM(cfg.llm, remat_policy=cfg.remat_policy, scan_unroll=cfg.scan_unroll, **kw)
    self.vision = SigLIP(cfg.vision, remat_policy=cfg.remat_policy, scan_unroll=cfg.scan_unroll,
                         **kw)
    self.aligner = MlpProjector(d, d, **kw)
    self.gen_embed = Embed(cfg.vq.codebook_size, cfg.vq.codebook_dim, ("codebook", None), **kw)
    self.gen_aligner = MlpProjector(d, d, **kw)
    self.gen_head = MlpProjector(cfg.gen_head_dim, cfg.vq.codebook_size, in_name="embed",
                                 out_name="vocab", **kw)
    self.vq = VQModel(cfg.vq, **kw)

  # --- understanding -------------------------------------------------------------------
  def image_features(self, pixel_values):
    """pixel_values [B, S, S, 3] -> aligned image features [B, P, D] (P = num_image_tokens)."""
    return self.aligner(self.vision(pixel_values))

  def embed(self, input_ids, pixel_values=None, gen_codes=None, is_gen=None):
    """Input embeddings: text, understanding images and generated-image codes.

    input_ids [B, T] int; pixel_values None or [B, N, S, S, 3] (N images per row, in the
    order of their placeholder runs); gen_codes/is_gen None or [B, T] (int codes, bool):
    where is_gen the embedding is gen_aligner(gen_embed(code)). Returns [B, T, D].
    """
    embeds = self.llm.embed_tokens(input_ids)
    if pixel_values is not None:
      b, n = pixel_values.shape[:2]
      features = self.image_features(pixel_values.reshape((b * n,) + pixel_values.shape[2:]))
      features = features.reshape(b, n * features.shape[1], features.shape[2])
      embeds = merge_image_features(embeds, features, input_ids == self.config.image_token_id)
    if gen_codes is not None:
      embeds = jnp.where(is_gen[..., None], self.gen_embeds(gen_codes).astype(embeds.dtype),
                         embeds)
    return embeds

  def decode(self, embeds, positions, key_mask, cache: Cache | None = None,
             cache_index: Any = 0, segment_ids=None):
    """The LLM trunk: embeddings [B, T, D] -> (final-normed hidden [B, T, D], cache).

    See `LLM.__call__` for the meaning of positions, key_mask, cache and cache_index.
    """
    return self.llm(embeds, positions, key_mask, cache, cache_index, segment_ids)

  def text_logits(self, hidden):
    """hidden [..., D] -> lm_head logits [..., vocab] float32."""
    return self.llm.logits(hidden)

  def __call__(self, input_ids, pixel_values=None, attention_mask=None, positions=None,
               segment_ids=None):
    """Text logits for a batch.

    input_ids [B, T] int; pixel_values None or [B, N, S, S, 3] float; attention_mask
    [B, T] (1 = token, 0 = padding; default all ones); positions [B, T] (default: counted
    over unpadded tokens, so left padding does not shift them); segment_ids [B, T]
    (packed rows). Returns logits [B, T, vocab] float32.
    """
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
      positions = default_positions(attention_mask)
    hidden, _ = self.decode(self.embed(input_ids, pixel_values), positions, attention_mask,
                            segment_ids=segment_ids)
    return self.text_logits(hidden)

  # --- generation ----------------------------------------------------------------------
  def gen_embeds(self, codes):
    """Image codes [...] int -> LLM input embeddings [..., D] (gen_aligner(gen_embed(codes)))."""
    return self.gen_aligner(self.gen_embed(codes))

  def gen_logits(self, hidden):
    """Final-normed LLM hidden [..., D] -> image-code logits [..., codebook_size] float32."""
    return self.gen_head(hidden).astype(jnp.float32)

  def encode_images(self, pixel_values):
    """pixel_values [B, H, W, 3] in [-1, 1] -> VQ codes int32 [B, h*w] (row-major)."""
    return self.vq.encode(pixel_values)

  def decode_codes(self, codes):
    """VQ codes int [B, h*w] -> images [B, H, W, 3] float32, roughly in [-1, 1]."""
    return self.vq.decode(codes).astype(jnp.float32)

  def init_all(self):
    """Touches every submodule with dummy inputs (used by `init_params`)."""
    cfg = self.config
    p = cfg.num_image_tokens
    ids = jnp.concatenate([jnp.full((1, 1), cfg.bos_token_id, jnp.int32),
                           jnp.full((1, p), cfg.image_token_id, jnp.int32)], axis=1)
    pixels = jnp.zeros((1, 1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
    logits = self(ids, pixels)
    hidden = self.gen_embeds(jnp.zeros((1, 1), jnp.int32))
    gen = self.gen_logits(hidden)
    vq_pixels = jnp.zeros((1, cfg.vq.image_size, cfg.vq.image_size, 3), jnp.float32)
    images = self.vq(vq_pixels)
    return logits, gen, images
