"""Training the three Janus-Pro stages: freezing rules, loss, optimizer, train step, loop.

  partition.py      regex rules over param paths -> trainable / frozen split
  loss.py           per-position CE through lm_head or gen_head, chunked logits
  optimizer.py      AdamW + clipping + constant LR after linear warm-up
  step.py           the train state, the pure train step, shardings, compile once
  checkpointing.py  Orbax CheckpointManager (async, keep K, atomic) + data-iterator state
  metrics.py        model FLOPs, peak FLOP/s, MFU; stdout, TensorBoard, metrics.jsonl
  loop.py           train(config, workdir): resume, step, log, save, SIGTERM, divergence
  recipe.py         the config schema and the published recipe (experiments/stage*.py)
  synthetic.py      a deterministic synthetic data iterator (tests, benchmarks, tiny runs)

Command line: python -m janus_jax.train --config experiments/stage2.py:tiny --workdir DIR
"""
