"""The embedded demo: train a small Janus from nothing on a procedural world, then score it.

  python -m janus_jax.demo --workdir DIR [--quick]

Phases (each uses the library's own entry points):
  1. data        the shapes world (world.py): pictures of 1-3 coloured shapes on a 3 x 3
                 grid, captions in GenEval's families, question-answer pairs, sentences;
                 held-out pictures and prompts; a byte-level BPE tokenizer trained on its
                 words (data.py)
  2. VQ          the image tokenizer trained from scratch (janus_jax.train_vq)
  2b. encoder    the understanding encoder pretrained on pictures and their descriptions
                 (janus_jax.train_vision, SigLIP's sigmoid loss); frozen in Stages I-II
  3. prepare     TFDS / ArrayRecord data sets, t2i pre-tokenised (janus_jax.data.prepare)
  4. Stages I-III  janus_jax.train with the `demo` variant of the stage configs
  5. evaluate    mini-GenEval through `python -m janus_jax.generate`'s GenEval layout and
                 a rule-based detector (detector.py); VQA accuracy through
                 janus_jax.sampling.generate_text (evaluate.py); the same for the untrained
                 starting point
  6. report      <workdir>/report/index.html (report.py); the final checkpoint is
                 <workdir>/stage3/export, which generate and chat accept
"""
