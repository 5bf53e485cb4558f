"""Input-pipeline throughput per data kind, raw images vs pre-tokenised codes, beside the
train step's consumption rate — all on this machine.

  python experiments/bench_data.py [--seconds 20] [--threads 8] [--workers 0] [--no-step]

Writes synthetic raw data in a temporary directory (JPEG photos of 640x480, LLaVA-style
conversations with one image and two rounds, captions, ~1.5 KB text documents), prepares
it with `janus_jax.data.prepare`, and times `build_host_dataset` (one process, host numpy
batches of 8 rows) for each kind at the released sizes: 384 px images, 576 image tokens,
576 VQ codes, seq_len 4096. Variants:
  understanding  raw       image files' bytes, decoded and preprocessed when read
  understanding  png384    prepared with --image-size 384 (preprocessed once, PNG)
  t2i            codes     pre-tokenised VQ codes (`prepare --vq-checkpoint`)
  t2i            raw+vq    image bytes, VQ-encoded while reading (data.vq_checkpoint)
  text           -
  mix 2:3:5      -         Janus-Pro stage II ratios over understanding(raw)/text/t2i(codes)
Also: VQ pre-tokenisation rate (`prepare` on the host), and the train step's rate for a
tiny and a mid-size model (janus_jax.train.step; skipped if unavailable).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3, image_token_id=5, boi_token_id=6,
              eoi_token_id=7)
WORDS = ("a red circle above a blue square photo of cat sitting on mat next to green ball "
         "the quick brown fox jumps over lazy dog colour how many shapes are there").split()


def configs():
  from janus_jax.config import JanusConfig, LLMConfig, VisionConfig
  real = JanusConfig.preset("janus-pro-1b").replace(**TOKENS)
  mid = real.replace(
      llm=LLMConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_layers=4,
                    num_heads=8, num_kv_heads=8, head_dim=64),
      vision=VisionConfig(image_size=384, patch_size=16, width=256, num_layers=2, num_heads=4,
                          mlp_dim=512), gen_head_dim=512, remat_policy="full")
  tiny = JanusConfig.preset("tiny").replace(**TOKENS)
  return real, mid, tiny


def photo(rng, height=480, width=640):
  """A smooth random image (compresses like a photo, unlike white noise)."""
  from PIL import Image
  small = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
  return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def write_raw(root: str, n_images: int, n_text: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  images = os.path.join(root, "images")
  os.makedirs(images)
  captions, conversations = [], []
  for i in range(n_images):
    name = f"{i}.jpg"
    photo(rng).save(os.path.join(images, name), quality=90)
    words = " ".join(rng.choice(WORDS, 30))
    captions.append({"image": name, "caption": words})
    conversations.append({"image": name, "conversations": [
        {"from": "human", "value": "<image>\n" + " ".join(rng.choice(WORDS, 12)) + "?"},
        {"from": "gpt", "value": " ".join(rng.choice(WORDS, 60))},
        {"from": "human", "value": " ".join(rng.choice(WORDS, 10)) + "?"},
        {"from": "gpt", "value": " ".join(rng.choice(WORDS, 40))}]})
  paths = {"captions": os.path.join(images, "captions.jsonl"),
           "llava": os.path.join(images, "llava.json"),
           "text": os.path.join(root, "text.jsonl")}
  with open(paths["captions"], "w") as f:
    f.writelines(json.dumps(c) + "\n" for c in captions)
  with open(paths["llava"], "w") as f:
    json.dump(conversations, f)
  with open(paths["text"], "w") as f:
    f.writelines(json.dumps({"text": " ".join(rng.choice(WORDS, 300))}) + "\n"
                 for _ in range(n_text))
  return paths


def random_params(abstract, seed=0):
  import jax
  rng = np.random.default_rng(seed)
  def make(a):
    return (rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(max(a.shape[-1], 1)))
  return jax.tree.map(make, abstract)


def vq_checkpoint(directory: str, config) -> str:
  """A converted-checkpoint directory holding only the VQ params (all the readers need)."""
  from janus_jax import checkpoint
  from janus_jax.model import abstract_params
  checkpoint.save(directory, {"vq": random_params(abstract_params(config)["vq"])}, config,
                  overwrite=True)
  return directory


def time_pipeline(cfg, processor, config, seconds: float, rows: int = 8) -> dict:
  from janus_jax.data.pipeline import build_host_dataset
  it = iter(build_host_dataset(cfg, processor=processor, model_config=config,
                               local_batch_size=rows, seed=0))
  next(it)                                   # start-up, first compile, thread pool
  counts, tokens, batches = collections.Counter(), 0, 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or not batches:
    batch = next(it)
    counts.update(batch["stats"])
    tokens += int((batch["segment_ids"] > 0).sum())
    batches += 1
  wall = time.perf_counter() - start
  examples = sum(v for k, v in counts.items() if k.startswith("examples/"))
  if hasattr(it, "close"):
    it.close()
  return {"examples/s": examples / wall, "tokens/s": tokens / wall, "batches/s": batches / wall,
          "examples/row": examples / max(1, batches * rows), "fill": tokens /
          max(1, batches * rows * cfg.seq_len)}


def time_train_step(config, processor, data_cfg, rows: int, steps: int) -> float | None:
  """Seconds per train step (Stage III trainables) on this machine's devices."""
  try:
    import jax
    import ml_collections
    from janus_jax import sharding
    from janus_jax.data.pipeline import build_train_iterator
    from janus_jax.model import abstract_params
    from janus_jax.train import partition
    from janus_jax.train.optimizer import make_optimizer
    from janus_jax.train.step import (abstract_batch_of, compile_train_step,
                                      init_optimizer_state, make_train_step, state_layout)
  except ImportError as e:
    print(f"   (train step not timed: {e})")
    return None
  mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1, devices=jax.devices()[:1])
  opt, schedule = make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
      clip_norm=1.0)))
  layout = state_layout(config, opt, partition.STAGE_III, mesh)
  params = jax.device_put(random_params(abstract_params(config)))
  trainable, frozen = partition.split(params, layout.mask)
  state = init_optimizer_state(opt, layout, trainable, 0)
  data = build_train_iterator(data_cfg, processor=processor, model_config=config,
                              global_batch_size=rows, mesh=mesh, seed=0)
  batch = next(data)
  step = make_train_step(config, opt, schedule, loss_chunk=min(512, data_cfg.seq_len))
  compiled = compile_train_step(step, layout,
                                abstract_batch_of(batch, mesh), mesh)
  state, metrics = compiled(state, frozen, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, frozen, next(data))
  jax.block_until_ready(metrics)
  data.close()
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=20.0, help="timing per variant")
  parser.add_argument("--threads", type=int, default=8, help="data.read_threads")
  parser.add_argument("--workers", type=int, default=0, help="data.num_workers")
  parser.add_argument("--images", type=int, default=96, help="raw images to write")
  parser.add_argument("--no-step", action="store_true", help="skip the train-step timing")
  parser.add_argument("--only-step", action="store_true", help="only the train-step timing")
  args = parser.parse_args()
  sys.stdout.reconfigure(line_buffering=True)

  import jax
  from janus_jax.data import prepare
  from janus_jax.data.pipeline import default_data_config
  from janus_jax.data.vq_codes import CodeEncoder, load_vq_params
  from janus_jax.processor import Processor, preprocess_generation_image
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from tests.tiny_tokenizer import write_tokenizer

  real, mid, tiny = configs()
  root = tempfile.mkdtemp(prefix="bench_data_")
  write_tokenizer(root, 512)
  processor = {c: Processor.from_directory(root, c) for c in (real, mid, tiny)}
  print(f"writing {args.images} raw images, conversations and texts to {root} ...")
  raw = write_raw(root, args.images, 8 * args.images)
  ckpt = vq_checkpoint(os.path.join(root, "vq"), real)

  print("preparing ...")
  out = {}
  out["und_raw"] = os.path.join(root, "und_raw")
  prepare.prepare("understanding", raw["llava"], out["und_raw"], progress=False)
  out["und_png"] = os.path.join(root, "und_png")
  prepare.prepare("understanding", raw["llava"], out["und_png"], image_size=384, progress=False)
  out["t2i_raw"] = os.path.join(root, "t2i_raw")
  prepare.prepare("t2i", raw["captions"], out["t2i_raw"], progress=False)
  out["text"] = os.path.join(root, "text")
  prepare.prepare("text", raw["text"], out["text"], progress=False)
  # VQ pre-tokenisation rate (what `prepare --vq-checkpoint` spends per image on this host).
  if not args.only_step:
    encoder = CodeEncoder(*load_vq_params(ckpt), batch_size=8)
    pixels = np.stack([preprocess_generation_image(os.path.join(root, "images", f"{i}.jpg"),
                                                   384) for i in range(8)])
    encoder(pixels)
    t = time.perf_counter()
    encoder(np.concatenate([pixels] * 2))
    vq_rate = 16 / (time.perf_counter() - t)
  # Pre-tokenising takes seconds per image here: a dozen images, repeated by the pipeline.
  subset = os.path.join(root, "images", "subset.jsonl")
  with open(raw["captions"]) as f, open(subset, "w") as g:
    g.writelines(f.readlines()[:12])
  out["t2i_codes"] = os.path.join(root, "t2i_codes")
  prepare.prepare("t2i", subset, out["t2i_codes"], vq_checkpoint=ckpt, progress=False)

  def data_cfg(sources, **kw):
    c = default_data_config()
    c.sources = sources
    c.read_threads, c.num_workers, c.prefetch_batches = args.threads, args.workers, 2
    c.max_images_per_row, c.log_every = 7, 0
    for k, v in kw.items():
      c[k] = v
    return c

  mix_sources = [{"kind": "understanding", "path": out["und_raw"]},
                 {"kind": "text", "path": out["text"]}, {"kind": "t2i", "path": out["t2i_codes"]}]
  variants = [] if args.only_step else [
      ("understanding", "raw", [{"kind": "understanding", "path": out["und_raw"]}], {}),
      ("understanding", "png384", [{"kind": "understanding", "path": out["und_png"]}], {}),
      ("t2i", "codes", [{"kind": "t2i", "path": out["t2i_codes"]}], {}),
      ("t2i", "raw+vq", [{"kind": "t2i", "path": out["t2i_raw"]}], {"vq_checkpoint": ckpt}),
      ("text", "-", [{"kind": "text", "path": out["text"]}], {}),
      ("mix 2:3:5", "und raw, t2i codes", mix_sources,
       {"kind_weights": {"understanding": 2, "text": 3, "t2i": 5}}),
  ]
  print(f"\njax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; "
        f"read_threads={args.threads}, num_workers={args.workers}; 8 rows x 4096 tokens, "
        f"384 px, 576 image tokens / codes; {args.seconds:.0f} s per variant; load average "
        f"{os.getloadavg()[0]:.1f} (other processes share the cores)\n")
  header = f"{'kind':<15}{'storage':<20}{'examples/s':>11}{'tokens/s':>11}{'batches/s':>10}"
  print(header + f"{'ex/row':>8}{'fill':>7}")
  print("-" * (len(header) + 15))
  results = {}
  for kind, storage, sources, kw in variants:
    # The VQ encoder runs at well under an image per second here: one-row batches.
    r = time_pipeline(data_cfg(sources, **kw), processor[real], real, args.seconds,
                      rows=1 if storage == "raw+vq" else 8)
    results[(kind, storage)] = r
    print(f"{kind:<15}{storage:<20}{r['examples/s']:>11.1f}{r['tokens/s']:>11.0f}"
          f"{r['batches/s']:>10.2f}{r['examples/row']:>8.1f}{r['fill']:>7.2f}")
  if not args.only_step:
    print(f"{'(prepare)':<15}{'VQ pre-tokenise':<20}{vq_rate:>11.1f}   images/s on the host")

  if args.no_step:
    return
  print("\ntrain step (Stage III trainables, float32, one CPU device; mid: remat, loss in "
        "chunks), same 2:3:5 mixture:")
  for name, config, rows, seq_len, steps in (("tiny", tiny, 8, 512, 5), ("mid", mid, 1, 4096, 2)):
    if config is tiny:
      tiny_root = os.path.join(root, "tiny")
      os.makedirs(tiny_root)
      tiny_out = {k: os.path.join(tiny_root, k) for k in ("und", "t2i", "text")}
      prepare.prepare("understanding", raw["llava"], tiny_out["und"], progress=False)
      prepare.prepare("t2i", subset, tiny_out["t2i"],
                      vq_checkpoint=vq_checkpoint(os.path.join(root, "vq_tiny"), tiny),
                      progress=False)
      sources = [{"kind": "understanding", "path": tiny_out["und"]},
                 {"kind": "text", "path": out["text"]}, {"kind": "t2i", "path": tiny_out["t2i"]}]
    else:
      sources = mix_sources
    cfg = data_cfg(sources, seq_len=seq_len,
                   kind_weights={"understanding": 2, "text": 3, "t2i": 5})
    seconds = time_train_step(config, processor[config], cfg, rows, steps)
    if seconds is None:
      break
    supply = time_pipeline(cfg, processor[config], config, args.seconds / 2, rows=rows)
    consume = rows * supply["examples/row"] / seconds
    print(f"  {name:<5} {rows} x {seq_len}: {seconds:7.2f} s/step -> consumes "
          f"{consume:8.1f} examples/s; pipeline supplies {supply['examples/s']:8.1f} "
          f"examples/s ({supply['examples/s'] / consume:.0f}x)")


if __name__ == "__main__":
  main()
