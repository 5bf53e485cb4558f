"""Janus-Pro Stage II: unified pretraining; the LLM trains too, SigLIP and VQ frozen.

  python -m janus_jax.train --config experiments/stage2.py:tiny --workdir /tmp/stage2
  python -m janus_jax.train --config experiments/stage2.py:pro_1b --workdir DIR \
      --config.init.path=CHECKPOINT_DIR --config.data.sources.t2i=...

Variants: tiny (CPU-sized: tiny preset, random init, synthetic data; see recipe.finish),
pro_1b, pro_7b. The numbers are Janus-Pro's Table 2 (JANUS.md §6.3). pro_* start from
Stage I's export (<stage-1 workdir>/export): set --config.init.path.
"""
from janus_jax.train import partition, recipe


def get_config(arg: str = "tiny"):
  c = recipe.base_config(arg)
  c.stage = 2
  c.trainable = partition.STAGE_II
  c.optimizer.learning_rate = 1e-4
  c.optimizer.warmup_steps = 5000
  c.global_batch_size = 512
  # Planned 360K steps; stopped at 270K.
  c.num_steps = {"pro_1b": 270_000, "pro_7b": 270_000}.get(arg, 200)
  und, text, t2i = (2, 3, 5)
  c.data.ratios = dict(understanding=und, text=text, t2i=t2i)
  return recipe.finish(c)
