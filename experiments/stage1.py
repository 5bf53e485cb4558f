"""Janus-Pro Stage I: the adaptors and heads train; LLM, SigLIP and VQ frozen.

  python -m janus_jax.train --config experiments/stage1.py:tiny --workdir /tmp/stage1
  python -m janus_jax.train --config experiments/stage1.py:pro_1b --workdir DIR \
      --config.init.path=CHECKPOINT_DIR --config.data.sources.t2i=...

Variants: tiny (CPU-sized: tiny preset, random init, synthetic data; see recipe.finish),
pro_1b, pro_7b. The numbers are Janus-Pro's Table 2 (JANUS.md §6.3). pro_* start from
a components checkpoint (python -m convert.components): set --config.init.path.
"""
from janus_jax.train import partition, recipe


def get_config(arg: str = "tiny"):
  c = recipe.base_config(arg)
  c.stage = 1
  c.trainable = partition.STAGE_I
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 600
  c.global_batch_size = 256
  c.num_steps = {"pro_1b": 20_000, "pro_7b": 20_000}.get(arg, 200)
  und, text, t2i = (1, 0, 3)
  c.data.ratios = dict(understanding=und, text=text, t2i=t2i)
  return recipe.finish(c)
