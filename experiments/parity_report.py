"""Prints the max |difference| per component between the Flax model and transformers' Janus.

  python experiments/parity_report.py

Same tiny random weights (tests/reference.py variants), float32, CPU.
"""
from __future__ import annotations

import os
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from convert.hf import config_from_hf, load_hf  # noqa: E402
from janus_jax import Janus  # noqa: E402
from tests import reference as ref  # noqa: E402


def main():
  rows = []
  for v in ref.VARIANTS:
    model = ref.build_hf_model(v)
    directory = ref.save_hf_model(model, tempfile.mkdtemp())
    config = config_from_hf(model.config.to_dict(), ref.TOKENS)
    _, params = load_hf(directory, config)
    apply = lambda *a, method=None: np.asarray(Janus(config).apply({"params": params}, *a, method=method))
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand((2, 3, v.vision_image, v.vision_image), generator=g) * 2 - 1
    p = v.num_image_tokens
    ids = torch.randint(10, v.vocab, (2, p + 12), generator=g)
    ids[:, 3:3 + p] = ref.TOKENS["image_token_id"]
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    grid = (v.vision_image // v.vision_patch) ** 2
    codes = torch.randint(0, v.vq_codebook, (2, grid), generator=g)
    hidden = torch.randn(2, 5, v.hidden, generator=g)
    with torch.no_grad():
      want = {
          "image_features": model.model.get_image_features(pixels).pooler_output.numpy(),
          "text_logits": model(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy(),
          "gen_embeds": model.prepare_embeddings_for_image_generation(codes).numpy(),
          "gen_logits": model.model.generation_head(hidden).numpy(),
          "decode_codes": model.decode_image_tokens(codes).numpy(),
      }
    nhwc = jnp.asarray(ref.to_nhwc(pixels))
    got = {
        "image_features": apply(nhwc, method=Janus.image_features),
        "text_logits": apply(jnp.asarray(ids.numpy()), nhwc[:, None], jnp.asarray(mask.numpy())),
        "gen_embeds": apply(jnp.asarray(codes.numpy()), method=Janus.gen_embeds),
        "gen_logits": apply(jnp.asarray(hidden.numpy()), method=Janus.gen_logits),
        "decode_codes": apply(jnp.asarray(codes.numpy()), method=Janus.decode_codes),
    }
    valid = mask.numpy().astype(bool)
    for name in want:
      a, b = got[name], want[name]
      if name == "text_logits":
        a, b = a[valid], b[valid]
      rows.append((v.name, name, float(np.abs(a - b).max()), float(np.abs(b).max())))
  print("| config | output | max abs diff | max abs value |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.2e} | {r[3]:.2f} |")


if __name__ == "__main__":
  main()
