"""The training batch: what every data kind becomes and what the train step consumes.

A batch is a dict of numpy (host) or jax (device) arrays, all rows of fixed length T:

  input_ids     int32   [B, T]  text token ids (pad where unused; image positions hold the
                                 `<image_placeholder>` id or, for generated images, pad)
  gen_codes     int32   [B, T]  VQ code fed at the positions where `is_gen` (else 0)
  is_gen        bool    [B, T]  the input embedding is gen_aligner(gen_embed(code))
  targets       int32   [B, T]  next-token target of each position (text id or VQ code)
  target_head   int32   [B, T]  HEAD_TEXT: scored by lm_head; HEAD_IMAGE: by gen_head
  loss_weights  float32 [B, T]  weight of each position's loss (0 = no loss)
  kind          int32   [B, T]  data kind of the example a position belongs to (KINDS)
  positions     int32   [B, T]  RoPE positions, restarting at 0 in every packed segment
  segment_ids   int32   [B, T]  1, 2, ... per packed example; 0 = padding
  pixel_values  float32 [B, N, S, S, 3]  understanding images of the row, in the order of
                                 their `<image_placeholder>` runs (zeros when unused)

Understanding images are merged at placeholder positions exactly as at inference
(`Janus.embed`), generated images enter through `gen_codes`, and the loss of a position
is cross-entropy of `targets` under the head named by `target_head`, times its weight.
"""
from __future__ import annotations

import numpy as np

HEAD_TEXT, HEAD_IMAGE = 0, 1
KIND_PAD, KIND_UNDERSTANDING, KIND_TEXT, KIND_T2I = 0, 1, 2, 3
KINDS = {"understanding": KIND_UNDERSTANDING, "text": KIND_TEXT, "t2i": KIND_T2I}

TOKEN_FIELDS = {
    "input_ids": np.int32, "gen_codes": np.int32, "is_gen": np.bool_, "targets": np.int32,
    "target_head": np.int32, "loss_weights": np.float32, "kind": np.int32,
    "positions": np.int32, "segment_ids": np.int32,
}


def empty_batch(batch: int, length: int, max_images: int, image_size: int,
                pad_token_id: int) -> dict[str, np.ndarray]:
  """An all-padding batch (fill rows in place)."""
  out = {name: np.zeros((batch, length), dtype) for name, dtype in TOKEN_FIELDS.items()}
  out["input_ids"][:] = pad_token_id
  out["pixel_values"] = np.zeros((batch, max_images, image_size, image_size, 3), np.float32)
  return out
