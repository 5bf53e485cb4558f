"""What the stage configs share: the config schema, the variants and the published recipe.

`experiments/stage{1,2,3}.py` start from `base_config(variant)`, set their stage's
published numbers and end with `finish`. Every field a run reads is created in
`base_config`, so `--config.<field>=...` overrides work and a misspelt one fails at once.
The published recipe (JANUS.md §6.3, Janus-Pro Table 2):

  stage  trains                                    LR     warm-up  batch  und:text:t2i  steps (1B / 7B)
  I      aligner, gen_aligner, gen_embed, gen_head 1e-3   600      256    1:0:3         20K / 20K
  II     + llm                                     1e-4   5000     512    2:3:5         270K (of 360K)
  III    + vision                                  4e-5   0        128    5:1:4         80K / 40K

AdamW β 0.9 / 0.95, weight decay 0, gradient clip 1.0, constant LR; sequences packed to
4096 tokens. Not published, chosen here: AdamW ε 1e-8, linear warm-up, CFG-dropout 0.1.
"""
from __future__ import annotations

import ml_collections

from janus_jax.processor import DEFAULT_SYSTEM_PROMPT


VARIANTS = ("tiny", "pro_1b", "pro_7b", "demo")
PRESETS = {"tiny": "tiny", "pro_1b": "janus-pro-1b", "pro_7b": "janus-pro-7b", "demo": "tiny"}

# Janus-Pro's Table 2, one entry per stage (the numbers the docstring's table gives).
STAGES = {
    1: dict(lr=1e-3, warmup=600, batch=256, ratios=(1, 0, 3),
            steps={"pro_1b": 20_000, "pro_7b": 20_000}),
    2: dict(lr=1e-4, warmup=5000, batch=512, ratios=(2, 3, 5),
            steps={"pro_1b": 270_000, "pro_7b": 270_000}),     # planned 360K, stopped at 270K
    3: dict(lr=4e-5, warmup=0, batch=128, ratios=(5, 1, 4),
            steps={"pro_1b": 80_000, "pro_7b": 40_000}),
}


def stage_config(stage: int, variant: str = "tiny") -> ml_collections.ConfigDict:
  """The config of Janus-Pro's stage `stage` (1, 2, 3) for `variant`."""
  from janus_jax.train import partition
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; choose one of {sorted(STAGES)}.")
  published = STAGES[stage]
  c = base_config(variant)
  c.stage = stage
  c.trainable = {1: partition.STAGE_I, 2: partition.STAGE_II, 3: partition.STAGE_III}[stage]
  c.optimizer.learning_rate = published["lr"]
  c.optimizer.warmup_steps = published["warmup"]
  c.global_batch_size = published["batch"]
  c.num_steps = published["steps"].get(variant, 200)
  und, text, t2i = published["ratios"]
  c.data.ratios = dict(understanding=und, text=text, t2i=t2i)
  return finish(c)


def base_config(variant: str) -> ml_collections.ConfigDict:
  """Every field of a train config, with the defaults shared by all stages of `variant`.

  A stage file then sets its published numbers (stage, trainable, optimizer,
  global_batch_size, num_steps, data.ratios) and calls `finish`.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}.")
  c = ml_collections.ConfigDict()
  c.stage = 0
  c.variant = variant
  c.seed = 0

  # The model: a preset (random init) or the architecture of the init checkpoint.
  c.model = ml_collections.ConfigDict(dict(
      preset=PRESETS[variant], dtype="bfloat16", param_dtype="float32",
      remat_policy={"pro_7b": "full", "pro_1b": "dots_no_batch"}.get(variant, "none"),
      scan_unroll=1))          # layers per loop iteration (JanusConfig.scan_unroll)
  # "checkpoint": a converted-checkpoint directory (init.path) — a components checkpoint
  # for Stage I (python -m convert.components), the previous stage's <workdir>/export
  # after that, or a released Janus-Pro (python -m convert). "random": from init.seed.
  c.init = ml_collections.ConfigDict(dict(source="checkpoint", path="", seed=0))

  c.trainable = ()             # regexes over param paths ("llm/layers/attn/q"), re.fullmatch
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
      clip_norm=1.0,
      decay_steps=0, final_fraction=0.1))   # 0: constant after warm-up (the published recipe)
  c.global_batch_size = 256
  c.grad_accum_steps = 1       # micro-batches per step (gradients summed inside the step)
  c.num_steps = 1000
  c.loss_chunk = 1024          # positions per logits chunk in the loss (0: all at once)

  # Handed unchanged to janus_jax.data.pipeline.build_train_iterator.
  c.data = ml_collections.ConfigDict(dict(
      source="mixture", seq_len=4096, max_images=1, packing=True, cfg_dropout=0.1,
      ratios=dict(understanding=1, text=1, t2i=1),
      sources=dict(understanding=[], text=[], t2i=[]), tokenizer_dir="",
      system_prompt=DEFAULT_SYSTEM_PROMPT))

  # FSDP over every device by default; 'tensor' > 1 shards heads, MLP and vocabulary.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True))
  c.log_every = 50
  c.tensorboard = True
  # jax's persistent compilation cache (the CLI, `xla.use_compilation_cache`): "auto" for
  # $JANUS_JAX_COMPILATION_CACHE or ~/.cache/janus-jax/jax_cache/<cpu>, a directory or
  # gs:// path, or "" for none. A resumed or repeated run then loads its step.
  c.compilation_cache_dir = "auto"
  # XLA options for compiling the step and the init, e.g. {"xla_backend_optimization_level": 0}
  # (CPU tests: compiles in half the time).
  c.xla_compiler_options = {}
  c.export = True              # write <workdir>/export (a converted-checkpoint dir) at the end
  return c


# The demo (python -m janus_jax.demo) trains everything from scratch on CPU, in minutes:
# its own LRs (no pretrained LLM to protect, so Stage II is not 10x below Stage I), SigLIP
# trainable in every stage (there is no pretrained encoder to keep frozen), short warm-ups,
# float32, small packed rows. The demo sets init.path, data sources and num_steps, and
# anneals each stage's rate (a cosine down to 10 % at its last step: optimizer.decay_steps).
DEMO_LR = {1: 2e-3, 2: 1e-3, 3: 5e-4}


def finish(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Applies the variant's deviations from the published recipe (tiny: CPU-sized; demo:
  see DEMO_LR)."""
  if c.variant == "demo":
    c.model.dtype = "float32"
    c.model.remat_policy = "none"
    c.model.scan_unroll = 64     # no layer loop: ~5 % faster steps on the CPU (bench_demo_step)
    if "vision/.*" not in c.trainable:
      c.trainable = tuple(c.trainable) + ("vision/.*",)
    c.optimizer.learning_rate = DEMO_LR.get(c.stage, c.optimizer.learning_rate)
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, 20) if c.stage < 3 else 0
    c.global_batch_size = 8      # the demo's Plan sets its own (Plan.batch_size)
    c.loss_chunk = 0
    c.data.seq_len = 256
    c.data.max_images = 8        # packed rows hold several short conversations
    c.data.system_prompt = ""
    c.checkpoint.every = 100
    c.checkpoint.keep = 1
    c.log_every = 10
    c.tensorboard = False
  if c.variant == "tiny":
    from janus_jax.train.synthetic import default_config
    ratios = dict(c.data.ratios)
    c.model.dtype = "float32"
    c.init.source = "random"
    c.global_batch_size = 8
    c.num_steps = 200
    # Tiny runs are a few hundred steps: a higher LR and a short warm-up so they learn.
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, 10)
    c.loss_chunk = 0
    c.data = default_config()
    c.data.ratios = ratios
    c.checkpoint.every = 50
    c.log_every = 10
    c.export = False
  return c
