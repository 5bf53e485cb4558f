"""Janus-Pro Stage III: supervised fine-tuning; SigLIP trains too, only the VQ frozen.

  python -m janus_jax.train --config experiments/stage3.py:tiny --workdir /tmp/stage3
  python -m janus_jax.train --config experiments/stage3.py:pro_1b --workdir DIR \
      --config.init.path=CHECKPOINT_DIR --config.data.sources.t2i=...

Variants: tiny (CPU-sized: tiny preset, random init, synthetic data; see recipe.finish),
pro_1b, pro_7b. The numbers are Janus-Pro's Table 2 (JANUS.md §6.3). pro_* start from
Stage II's export, or a converted Janus-Pro checkpoint (python -m convert): set --config.init.path.
"""
from janus_jax.train import partition, recipe


def get_config(arg: str = "tiny"):
  c = recipe.base_config(arg)
  c.stage = 3
  c.trainable = partition.STAGE_III
  c.optimizer.learning_rate = 4e-5
  c.optimizer.warmup_steps = 0
  c.global_batch_size = 128
  c.num_steps = {"pro_1b": 80_000, "pro_7b": 40_000}.get(arg, 200)
  und, text, t2i = (5, 1, 4)
  c.data.ratios = dict(understanding=und, text=text, t2i=t2i)
  return recipe.finish(c)
