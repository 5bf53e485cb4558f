"""XLA:CPU with YNNPACK's kernels (jax 0.10's default) against its Eigen ones, on the
programs janus_jax spends its time in; the figures behind `janus_jax.xla`'s choice.

  python experiments/bench_xla_options.py [--repeats 5] [--sections decode,vq,train]
                                          [--demo-workdir DIR] [--tokens 144]

Each program is compiled twice in this process, once with `janus_jax.xla.YNNPACK = True`
(XLA's defaults) and once with False (`--xla_cpu_experimental_ynn_fusion_type=` for that
compilation), and the two are timed alternately, so that load on a shared machine hits both
alike. Prints medians and the ratio ynnpack / eigen (> 1: Eigen is faster).

  decode  the mid-size model's image-token loop (hidden 1024, 8 layers, intermediate 2816,
          gen head 1024 -> 16384; random weights), greedy CFG, batch 1 and 8, --tokens tokens
  vq      one VQ training step of the demo's VQ (48 px, batch 32)
  train   the demo's Stage II train step (needs --demo-workdir: a finished demo run)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from janus_jax import xla  # noqa: E402

VARIANTS = {"ynnpack": True, "eigen": False}


def compare(name: str, build, repeats: int) -> dict:
  """build() -> a no-argument callable that runs the program once (compiled under the
  current xla.YNNPACK). Times both variants alternately; prints and returns the medians."""
  runs = {}
  for variant, flag in VARIANTS.items():
    xla.YNNPACK = flag
    runs[variant] = build()
    runs[variant]()                        # first call: compile / warm-up, not timed
  xla.YNNPACK = None
  times = {v: [] for v in runs}
  for _ in range(repeats):
    for variant, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[variant].append(time.perf_counter() - start)
  med = {v: statistics.median(t) for v, t in times.items()}
  print(f"{name:32s} ynnpack {1e3 * med['ynnpack']:9.1f} ms   eigen {1e3 * med['eigen']:9.1f} ms"
        f"   ynnpack / eigen {med['ynnpack'] / med['eigen']:.2f}", flush=True)
  return med


def decode_builders(tokens: int):
  from janus_jax import sampling
  from janus_jax.config import JanusConfig, LLMConfig, VisionConfig, VQConfig
  from janus_jax.model import init_params
  grid = int(round(tokens ** 0.5))
  cfg = JanusConfig(
      llm=LLMConfig(vocab_size=102400, hidden_size=1024, intermediate_size=2816, num_layers=8,
                    num_heads=16, num_kv_heads=16, head_dim=64, max_position_embeddings=2048),
      vision=VisionConfig(image_size=32, patch_size=8, width=64, num_layers=1, num_heads=4,
                          mlp_dim=128),
      vq=VQConfig(image_size=grid * 16, codebook_size=16384, base_channels=32,
                  channel_mult=(1, 1, 1, 1, 1), num_res_blocks=0, z_channels=32),
      gen_head_dim=1024)
  params = init_params(cfg, jax.random.key(0))
  params = jax.tree.map(lambda a: a / np.sqrt(a.shape[-2]) if a.ndim >= 2 and a.shape[-2] > 8
                        else a, params)     # O(1) activations
  form = sampling._decode_form(cfg, None)
  static = sampling._ImageStatic(cfg, None, True, False, form,
                                 sampling.window_segments(cfg.vq.num_tokens, bool(form[0])))

  def builder(batch: int):
    length = 32
    ids = np.full((batch, length), 7, np.int32)
    ids[:, 0], ids[:, -1] = cfg.bos_token_id, cfg.boi_token_id
    args = [params, jnp.asarray(ids), jnp.ones((batch, length), jnp.int32),
            jnp.tile(jnp.arange(length, dtype=jnp.int32), (batch, 1)),
            sampling._image_keys(0, range(batch)), jnp.float32(5), jnp.float32(1), jnp.float32(1)]

    def build():
      program = sampling._image_program(static).lower(*args).compile(
          xla.compiler_options(decode=True) or None)
      return lambda: program(*args).block_until_ready()
    return build
  return builder


def vq_builder():
  import random
  import optax
  import flax.linen as nn
  from janus_jax import train_vq
  from janus_jax.demo import world
  from janus_jax.demo.run import DEMO_VQ
  from janus_jax.modules.vq import VQModel
  rng = random.Random(0)
  images = np.stack([world.render(world.dense_scene(rng)) for _ in range(32)])
  pixels = jnp.asarray(images.astype(np.float32) / 127.5 - 1)
  model = VQModel(DEMO_VQ)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), pixels[:1])["params"])
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  def build():
    step = train_vq.make_step(model, optimizer, train_vq.VQTrainConfig())
    return lambda: jax.block_until_ready(step(params, opt_state, pixels, jnp.asarray(True))[0])
  return build


def train_builder(workdir: str):
  from janus_jax.demo.run import Demo, plan_of
  from janus_jax.train import loop
  demo = Demo(workdir, plan_of(workdir), progress=False)
  run = loop.setup(demo.stage_config(2, demo.path("stage1", "export"), demo.sources()))
  data = run.data()
  batch = next(data)
  data.close()
  trainable, frozen = run.params()

  def build():
    compiled = run.compile(batch)
    holder = {"state": run.new_state(trainable)}

    def step():
      holder["state"], metrics = compiled(holder["state"], frozen, batch)
      jax.block_until_ready(metrics)
    return step
  return build


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sections", default="decode,vq,train")
  parser.add_argument("--tokens", type=int, default=144, help="image tokens in `decode`")
  parser.add_argument("--demo-workdir", help="a finished demo run (for `train`)")
  args = parser.parse_args(argv)
  sections = args.sections.split(",")
  name = lambda on: "YNNPACK" if on else "Eigen"
  print(f"CPU has AVX-512: {xla.cpu_has_avx512()}; janus_jax's choice here: "
        f"{name(xla.ynnpack_enabled(decode=True))} for decode loops, "
        f"{name(xla.ynnpack_enabled())} for everything else")
  if "decode" in sections:
    builder = decode_builders(args.tokens)
    for batch in (1, 8):
      compare(f"image decode, batch {batch} (per call)", builder(batch), args.repeats)
  if "vq" in sections:
    compare("demo VQ train step", vq_builder(), args.repeats)
  if "train" in sections:
    if not args.demo_workdir:
      parser.error("section `train` needs --demo-workdir (a finished demo run)")
    compare("demo Stage II train step", train_builder(args.demo_workdir), args.repeats)


if __name__ == "__main__":
  main()
