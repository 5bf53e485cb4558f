"""Janus-Pro Stage III: supervised fine-tuning; SigLIP trains too, only the VQ frozen.

  python -m janus_jax.train --config experiments/stage3.py:tiny --workdir /tmp/stage3
  python -m janus_jax.train --config experiments/stage3.py:pro_1b --workdir DIR \
      --config.init.path=CHECKPOINT_DIR --config.data.sources.t2i=...

Variants: tiny (CPU-sized: tiny preset, random init, synthetic data; see recipe.finish),
pro_1b, pro_7b, demo (what python -m janus_jax.demo runs). The numbers are Janus-Pro's Table 2 (JANUS.md §6.3). pro_* start from
Stage II's export, or a converted Janus-Pro checkpoint (python -m convert): set --config.init.path.
"""
from janus_jax.train import recipe


def get_config(arg: str = "tiny"):
  return recipe.stage_config(3, arg)
