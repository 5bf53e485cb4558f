"""Janus-Pro Stage I: the adaptors and heads train; LLM, SigLIP and VQ frozen.

  python -m janus_jax.train --config experiments/stage1.py:tiny --workdir /tmp/stage1
  python -m janus_jax.train --config experiments/stage1.py:pro_1b --workdir DIR \
      --config.init.path=CHECKPOINT_DIR --config.data.sources.t2i=...

Variants: tiny (CPU-sized: tiny preset, random init, synthetic data; see recipe.finish),
pro_1b, pro_7b, demo (what python -m janus_jax.demo runs). The numbers are Janus-Pro's Table 2 (JANUS.md §6.3). pro_* start from
a components checkpoint (python -m convert.components): set --config.init.path.
"""
from janus_jax.train import recipe


def get_config(arg: str = "tiny"):
  return recipe.stage_config(1, arg)
