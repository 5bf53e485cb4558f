"""Sampling speed of janus_jax beside transformers, same random weights, same run.

  python experiments/bench_sampling.py [--repeats 3] [--out bench.json] [--sections ...]
                                       [--xla-flags "..."] [--workdir /tmp/janus_bench_sampling]

For each config a float32 transformers `JanusForConditionalGeneration` is built with random
weights, saved, converted with `convert.pipeline.convert(dtype="float32")` and loaded with
`janus_jax.load(dtype="float32")`, so both sides hold identical weights. Timings are medians of
`--repeats` runs (transformers and ours alternate, so both see the same machine load; the
first JAX call, which compiles, is reported apart and not counted).

Sections (`--sections`, comma separated, default all):
  bandwidth  memory read bandwidth of this machine (1 GiB float32 arrays): the roofline's base.
  image      mid-size config (LLM hidden 1024, 8 layers, 16 heads, intermediate 2816, vocab
             102400, gen head 1024 -> 16384 codes), 576 image tokens (24 x 24 VQ grid; the
             SigLIP tower is tiny, 96 px / patch 4, it is not on the decode path; the VQ decoder
             is the real VQ-16 architecture at 384 px), greedy CFG (w = 5) at batch 1 and 8 images.
  chat       the same mid-size model: greedy answers to image + question, batch 1 and 8,
             exactly --new-tokens new tokens (transformers: min_new_tokens = max_new_tokens; ours
             stops only if every row has produced EOS, the steps run are reported).
  image1b    janus-pro-1b LLM and generation head (hidden 2048, 24 layers, intermediate 5632,
             vocab 102400, gen head 2048 -> 16384) at batch 1 with a 64-token image (8 x 8 grid:
             tiny SigLIP 32 px / patch 4 and a tiny VQ; transformers' generate always makes
             vision_config.num_image_tokens tokens, so both sides get this smaller grid).
             Transformers runs first and is freed before ours loads (two float32 copies of the
             1B plus the conversion would not fit the memory of a small machine beside others).

Throughput counts generated image tokens (one per image per step; the CFG rows are not
counted). "ms/step" is the whole generate call divided by the number of tokens (prefill
included, so it slightly overstates the decode step). Roofline (batch-1 image decode): bytes of
float32 weights read per step (LLM layers + final norm + gen head + gen aligner + the gen_embed
rows) / measured bandwidth / ms per step.

Threads: torch.set_num_threads(2) and torch.inference_mode; JAX on the CPU with its default
intra-op pool (all cores). `--xla-flags` is appended to XLA_FLAGS before jax is imported; the
flags used are recorded in the JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("bandwidth", "image", "chat", "image1b")
PROMPT = "a photo of a cat sitting on a mat next to a green ball"
QUESTIONS = ["What colour is the circle?", "How many shapes are there in this picture at all?",
             "Describe the image.", "Is there a triangle?",
             "What is in the top left corner of the picture, and what colour is it?",
             "Is it a photo?", "What animal is this?",
             "Where was this taken, and what time of the day is it in the picture?"]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sections", default=",".join(SECTIONS))
  parser.add_argument("--batches", default="1,8", help="image/chat batch sizes")
  parser.add_argument("--new-tokens", type=int, default=64, help="chat answer length")
  parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax loads")
  parser.add_argument("--workdir", default="/tmp/janus_bench_sampling")
  parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
  parser.add_argument("--out", help="write the figures as JSON here")
  parser.add_argument("--quiet-wait", type=float, default=0.0,
                      help="before each timed run wait up to this many seconds for other "
                           "processes to use < --quiet-threshold of the CPUs")
  parser.add_argument("--quiet-threshold", type=float, default=0.15)
  args = parser.parse_args(argv)
  args.sections = [s for s in args.sections.split(",") if s]
  unknown = set(args.sections) - set(SECTIONS)
  if unknown:
    parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
  args.batches = [int(b) for b in args.batches.split(",")]
  return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ARGS.xla_flags}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def load_average() -> float:
  return round(os.getloadavg()[0], 2)


# --- other processes ------------------------------------------------------------------------
# On a shared machine other processes' CPU use distorts both sides (torch's OpenMP threads
# especially). Each timed run waits (up to --quiet-wait s) for the machine to be quiet and
# records how busy the other processes were while it ran.
def _cpu_counters() -> tuple[float, float, float]:
  """(busy seconds of all CPUs, total seconds of all CPUs, this process's CPU seconds)."""
  with open("/proc/stat") as f:
    v = [int(x) for x in f.readline().split()[1:]]
  tick = os.sysconf("SC_CLK_TCK")
  busy = (sum(v) - v[3] - v[4]) / tick
  t = os.times()
  return busy, sum(v) / tick, t.user + t.system


class OtherLoad:
  """Context manager: `.fraction` = CPU share (0..1 of all cores) used by other processes."""

  def __enter__(self):
    self.start = _cpu_counters()
    return self

  def __exit__(self, *exc):
    busy, total, own = (b - a for a, b in zip(self.start, _cpu_counters()))
    self.fraction = max(0.0, busy - own) / max(total, 1e-9)
    return False


QUIET = {"threshold": 0.15, "max_wait": 0.0}


def wait_quiet() -> float:
  """Waits until other processes use < threshold of the CPUs over 3 s (or max_wait passes)."""
  deadline = time.monotonic() + QUIET["max_wait"]
  while True:
    with OtherLoad() as other:
      time.sleep(3)
    if other.fraction < QUIET["threshold"] or time.monotonic() > deadline:
      return other.fraction


def timed(fn):
  """-> (result, seconds, other processes' CPU share during the call)."""
  wait_quiet()
  with OtherLoad() as other:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
  return out, seconds, other.fraction


# --- memory bandwidth ----------------------------------------------------------------------------
def measure_bandwidth(repeats: int) -> dict:
  """Read bandwidth over a 1 GiB float32 array: numpy sum (one thread), a jitted jax sum
  (XLA's thread pool) and a numpy copy (read + write bytes). The roofline uses the best read."""
  import jax
  import jax.numpy as jnp
  a = np.ones(2 ** 28, np.float32)
  b = np.empty_like(a)
  out = {}
  out["other_cpu_before"] = wait_quiet()
  t, _ = median_time(lambda: np.add.reduce(a), max(repeats, 5))
  out["numpy_sum_GBps"] = a.nbytes / t / 1e9
  t, _ = median_time(lambda: np.copyto(b, a), max(repeats, 5))
  out["numpy_copy_GBps"] = 2 * a.nbytes / t / 1e9
  del b
  x = jnp.asarray(a)
  del a
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  t, _ = median_time(lambda: total(x).block_until_ready(), max(repeats, 5))
  out["jax_sum_GBps"] = x.nbytes / t / 1e9
  out["read_GBps"] = max(out["numpy_sum_GBps"], out["jax_sum_GBps"])
  return out


# --- models ---------------------------------------------------------------------------------------
MID = dict(vocab=102400, hidden=1024, intermediate=2816, layers=8, heads=16,
           vision_image=96, vision_patch=4, vq_base=128, vq_mult=(1, 1, 2, 2, 4), vq_res=2,
           vq_latent=256, codebook=16384, max_pos=2048)
PRO_1B = dict(vocab=102400, hidden=2048, intermediate=5632, layers=24, heads=16,
              vision_image=32, vision_patch=4, vq_base=32, vq_mult=(1, 2), vq_res=1,
              vq_latent=32, codebook=16384, max_pos=2048)


def hf_config(s: dict):
  from transformers import JanusConfig
  from tests.reference import TOKENS
  return JanusConfig(
      text_config=dict(model_type="llama", vocab_size=s["vocab"], hidden_size=s["hidden"],
                       intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                       num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                       head_dim=s["hidden"] // s["heads"], max_position_embeddings=s["max_pos"],
                       rms_norm_eps=1e-6, bos_token_id=TOKENS["bos_token_id"],
                       eos_token_id=TOKENS["eos_token_id"], pad_token_id=TOKENS["pad_token_id"],
                       tie_word_embeddings=False),
      vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         image_size=s["vision_image"], patch_size=s["vision_patch"],
                         projection_dim=s["hidden"], mlp_ratio=2.0,
                         num_image_tokens=(s["vision_image"] // s["vision_patch"]) ** 2),
      vq_config=dict(embed_dim=8, num_embeddings=s["codebook"], base_channels=s["vq_base"],
                     channel_multiplier=list(s["vq_mult"]), num_res_blocks=s["vq_res"],
                     latent_channels=s["vq_latent"], projection_dim=s["hidden"],
                     image_token_embed_dim=s["hidden"]),
      image_token_id=TOKENS["image_token_id"], tie_word_embeddings=False)


def build_models(spec: dict, directory: str, seed: int = 0):
  """-> (transformers model, source dir, converted dir). Random float32 weights with O(1)
  activations (tests.reference's scheme: matrices ~ N(0, 1/fan_in), norms 1 + 0.1 N)."""
  import torch
  from transformers import JanusForConditionalGeneration
  from tests import checkpoints
  from tests.reference import TOKENS
  from convert.pipeline import convert
  torch.manual_seed(seed)
  model = JanusForConditionalGeneration(hf_config(spec)).float().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      elif "embed" in name or "quantize" in name:
        p.copy_(noise * (1.0 if "quantize" in name else 0.5))
      else:
        p.copy_(noise / np.sqrt(int(np.prod(p.shape[1:]))))
      del noise
  gc.collect()
  gcfg = model.generation_config
  gcfg.pad_token_id, gcfg.bos_token_id = TOKENS["pad_token_id"], TOKENS["bos_token_id"]
  gcfg.eos_token_id = TOKENS["eos_token_id"]
  gcfg.generation_kwargs = {"boi_token_id": TOKENS["boi_token_id"]}
  shutil.rmtree(directory, ignore_errors=True)
  src, dst = os.path.join(directory, "hf"), os.path.join(directory, "converted")
  checkpoints.write_hf(model, src)
  convert(src, dst, dtype="float32", progress=False)
  shutil.rmtree(src)
  return model, dst


def load_ours(dst: str):
  import janus_jax
  return janus_jax.load(dst, dtype="float32")


def decode_weight_bytes(params) -> int:
  """float32 bytes read per image-token step: LLM layers, final norm, gen head, gen aligner."""
  import jax
  nbytes = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize
                            for x in jax.tree.leaves(tree))
  llm = params["llm"]
  return (nbytes(llm["layers"]) + nbytes(llm["final_norm"]) + nbytes(params["gen_head"])
          + nbytes(params["gen_aligner"]))


# --- image generation -------------------------------------------------------------------------
def bench_image(name: str, spec: dict, args, sequential: bool = False) -> dict:
  """Greedy CFG image generation, transformers vs ours, at args.batches (batch 1 only when
  `sequential`: transformers is measured and freed before our copy of the weights loads)."""
  import types
  import torch
  from janus_jax import checkpoint, sampling
  from janus_jax.processor import Processor
  workdir = os.path.join(args.workdir, name)
  start = time.perf_counter()
  model, dst = build_models(spec, workdir)
  print(f"[{name}] built, saved and converted in {time.perf_counter() - start:.0f} s", flush=True)
  tokens = (spec["vision_image"] // spec["vision_patch"]) ** 2
  batches = [1] if sequential else args.batches
  result = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
            "image_tokens": tokens, "cfg_weight": 5.0, "batches": {}}
  processor = Processor.from_directory(dst, checkpoint.read_config(dst))
  enc = processor.generation_batch([PROMPT])
  result["prompt_tokens"] = int(enc["input_ids"].shape[1])

  def hf_run(batch):
    ids = torch.from_numpy(np.repeat(enc["input_ids"], batch, 0)).long()
    mask = torch.from_numpy(np.repeat(enc["attention_mask"], batch, 0)).long()

    def run():
      with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, generation_mode="image",
                              do_sample=False, guidance_scale=5.0).numpy()
    with torch.inference_mode():   # allocator / thread pool warm-up, not timed
      model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=2, do_sample=False)
    return run

  def ours_run(p, batch):
    def run():
      timings: dict = {}
      codes = sampling.generate_image_codes(p, [PROMPT], num_images=batch, cfg_weight=5.0,
                                            top_k=1, timings=timings)
      return codes, timings
    return run

  def record(entry, side, seconds, other):
    entry.setdefault(f"{side}_times", []).append(seconds)
    entry.setdefault(f"{side}_other_cpu", []).append(round(other, 3))

  entries = {b: {} for b in batches}
  hf_codes, hf_vq = {}, {}
  p = None
  if sequential:   # transformers first, then free it before our copy is loaded
    for batch in batches:
      run = hf_run(batch)
      for r in range(args.repeats):
        hf_codes[batch], seconds, other = timed(run)
        record(entries[batch], "hf", seconds, other)
        print(f"[{name}] b{batch} transformers repeat {r + 1}: {seconds:.2f} s "
              f"(others {100 * other:.0f} % CPU)", flush=True)
    del model
    gc.collect()
    model = None
  p = load_ours(dst)
  result["weight_bytes_per_step"] = decode_weight_bytes(p.params)
  for batch in batches:
    entry = entries[batch]
    run_ours = ours_run(p, batch)
    start = time.perf_counter()
    codes, timings = run_ours()
    entry["ours_compile_s"] = timings["compile_s"]
    entry["ours_first_call_s"] = time.perf_counter() - start
    run_hf = None if sequential else hf_run(batch)
    for r in range(args.repeats):
      note = ""
      if run_hf is not None:
        hf_codes[batch], seconds, other = timed(run_hf)
        record(entry, "hf", seconds, other)
        note = f"transformers {seconds:.2f} s (others {100 * other:.0f} %), "
      (codes, timings), _, other = timed(run_ours)
      record(entry, "ours", timings["generate_s"], other)
      print(f"[{name}] b{batch} repeat {r + 1}: {note}ours {timings['generate_s']:.2f} s "
            f"(others {100 * other:.0f} %)", flush=True)
    hf_s, ours_s = statistics.median(entry["hf_times"]), statistics.median(entry["ours_times"])
    n = batch * tokens
    entry.update({
        "hf_s": hf_s, "ours_s": ours_s, "hf_tok_per_s": n / hf_s, "ours_tok_per_s": n / ours_s,
        "speedup": hf_s / ours_s, "hf_ms_per_step": 1e3 * hf_s / tokens,
        "ours_ms_per_step": 1e3 * ours_s / tokens,
        "codes_equal_fraction": float(np.mean(codes == hf_codes[batch])),
    })
    if batch == 1 and args.bandwidth:
      bw = args.bandwidth * 1e9
      entry["ours_roofline_fraction"] = result["weight_bytes_per_step"] / bw / (ours_s / tokens)
      entry["hf_roofline_fraction"] = result["weight_bytes_per_step"] / bw / (hf_s / tokens)
    # VQ decode of the generated codes (not part of the token loop).
    if model is not None:
      with torch.inference_mode():
        t, _ = median_time(lambda: model.decode_image_tokens(torch.from_numpy(codes).long()),
                           args.repeats)
      entry["hf_vq_decode_s"] = t
    sampling.decode_images(p, codes)           # compile
    entry["ours_vq_decode_s"], _ = median_time(lambda: sampling.decode_images(p, codes),
                                               args.repeats)
    result["batches"][str(batch)] = entry
    print(f"[{name}] b{batch}: transformers {entry['hf_tok_per_s']:.1f} tok/s, ours "
          f"{entry['ours_tok_per_s']:.1f} tok/s ({entry['speedup']:.2f}x), compile "
          f"{entry['ours_compile_s']:.1f} s, codes equal {entry['codes_equal_fraction']:.3f}",
          flush=True)
  del p, model
  gc.collect()
  if not args.keep:
    shutil.rmtree(workdir, ignore_errors=True)
  return result


# --- chat -------------------------------------------------------------------------------------
def bench_chat(spec: dict, args) -> dict:
  """Greedy answers to image + question, transformers vs ours, at args.batches."""
  import torch
  from janus_jax import sampling
  workdir = os.path.join(args.workdir, "chat")
  model, dst = build_models(spec, workdir, seed=1)
  p = load_ours(dst)
  new = args.new_tokens
  rng = np.random.default_rng(0)
  result = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
            "new_tokens": new, "batches": {}}
  for batch in args.batches:
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    images = [rng.integers(0, 256, (int(rng.integers(40, 200)), int(rng.integers(40, 200)), 3),
                           dtype=np.uint8) for _ in range(batch)]
    enc = p.processor.understanding_batch(questions, images)
    ids = torch.from_numpy(enc["input_ids"]).long()
    mask = torch.from_numpy(enc["attention_mask"]).long()
    pixels = torch.from_numpy(enc["pixel_values"][:, 0].transpose(0, 3, 1, 2).copy())

    def run_hf(n):
      with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False).numpy()[:, ids.shape[1]:]

    def run_ours(n):
      timings: dict = {}
      tokens = sampling.generate_text_tokens(p, questions, images, max_new_tokens=n,
                                             timings=timings)
      return tokens, timings

    entry = {"prompt_tokens": int(ids.shape[1])}
    for n, key in ((1, "first"), (new, "full")):
      _, timings = run_ours(n)
      entry[f"ours_compile_{key}_s"] = timings["compile_s"]
    run_hf(2)   # warm-up
    times = {("hf", 1): [], ("hf", new): [], ("ours", 1): [], ("ours", new): []}
    others, steps = [], []
    for r in range(args.repeats):
      for n in (1, new):
        want, seconds, other = timed(lambda: run_hf(n))
        times[("hf", n)].append(seconds)
        others.append(other)
        (got, timings), _, other = timed(lambda: run_ours(n))
        times[("ours", n)].append(timings["generate_s"])
        others.append(other)
        if n == new:
          steps.append(timings["steps"])
      print(f"[chat] b{batch} repeat {r + 1}: transformers {times[('hf', new)][-1]:.2f} s "
            f"(first token {times[('hf', 1)][-1]:.2f} s), ours {times[('ours', new)][-1]:.2f} s "
            f"(first token {times[('ours', 1)][-1]:.2f} s)", flush=True)
    entry["other_cpu"] = [round(o, 3) for o in others]
    for side in ("hf", "ours"):
      first, full = statistics.median(times[(side, 1)]), statistics.median(times[(side, new)])
      entry[f"{side}_ttft_s"] = first
      entry[f"{side}_total_s"] = full
      entry[f"{side}_times"] = times[(side, new)]
      entry[f"{side}_ttft_times"] = times[(side, 1)]
      entry[f"{side}_tok_per_s"] = batch * new / full
      entry[f"{side}_decode_tok_per_s"] = batch * (new - 1) / max(full - first, 1e-9)
    entry["ours_steps"] = steps
    entry["tokens_equal_fraction"] = float(np.mean(got == want))
    entry["speedup"] = entry["hf_total_s"] / entry["ours_total_s"]
    result["batches"][str(batch)] = entry
    print(f"[chat] b{batch}: transformers {entry['hf_tok_per_s']:.1f} tok/s (TTFT "
          f"{entry['hf_ttft_s']:.2f} s), ours {entry['ours_tok_per_s']:.1f} tok/s (TTFT "
          f"{entry['ours_ttft_s']:.2f} s), steps {steps}, tokens equal "
          f"{entry['tokens_equal_fraction']:.3f}", flush=True)
  del p, model
  gc.collect()
  if not args.keep:
    shutil.rmtree(workdir, ignore_errors=True)
  return result


# --- report -----------------------------------------------------------------------------------
def table(figures: dict) -> str:
  rows = ["| measurement | transformers | ours (JAX) | ours / transformers |", "|---|---|---|---|"]
  for name, label in (("image", "mid-size, 576 tokens"), ("image1b", "janus-pro-1b, 64 tokens")):
    for batch, e in figures.get(name, {}).get("batches", {}).items():
      rows.append(f"| image tokens/s, {label}, batch {batch} | {e['hf_tok_per_s']:.1f} | "
                  f"{e['ours_tok_per_s']:.1f} | {e['speedup']:.2f}x |")
      rows.append(f"| ms per image-token step, {label}, batch {batch} | "
                  f"{e['hf_ms_per_step']:.1f} | {e['ours_ms_per_step']:.1f} | |")
      if "ours_roofline_fraction" in e:
        rows.append(f"| bandwidth roofline fraction, {label}, batch {batch} | "
                    f"{100 * e['hf_roofline_fraction']:.0f} % | "
                    f"{100 * e['ours_roofline_fraction']:.0f} % | |")
      if "hf_vq_decode_s" in e:
        rows.append(f"| VQ decode of {batch} image(s), s | {e['hf_vq_decode_s']:.2f} | "
                    f"{e['ours_vq_decode_s']:.2f} | {e['hf_vq_decode_s'] / e['ours_vq_decode_s']:.2f}x |")
      rows.append(f"| compile, {label}, batch {batch}, s | - | {e['ours_compile_s']:.1f} | |")
  for batch, e in figures.get("chat", {}).get("batches", {}).items():
    rows.append(f"| chat answer tokens/s, batch {batch} ({figures['chat']['new_tokens']} new, "
                f"{e['prompt_tokens']}-token prompt) | {e['hf_tok_per_s']:.1f} | "
                f"{e['ours_tok_per_s']:.1f} | {e['speedup']:.2f}x |")
    rows.append(f"| chat decode tokens/s after the first, batch {batch} | "
                f"{e['hf_decode_tok_per_s']:.1f} | {e['ours_decode_tok_per_s']:.1f} | "
                f"{e['ours_decode_tok_per_s'] / e['hf_decode_tok_per_s']:.2f}x |")
    rows.append(f"| chat time to first token, batch {batch}, s | {e['hf_ttft_s']:.2f} | "
                f"{e['ours_ttft_s']:.2f} | {e['hf_ttft_s'] / e['ours_ttft_s']:.2f}x faster |")
  shares = [x for name in ("image", "image1b") for e in figures.get(name, {}).get("batches", {}).values()
            for x in e.get("hf_other_cpu", []) + e.get("ours_other_cpu", [])]
  shares += [x for e in figures.get("chat", {}).get("batches", {}).values() for x in e["other_cpu"]]
  if shares:
    rows.append(f"| other processes' CPU share during the timed runs (median / max) | | "
                f"{100 * statistics.median(shares):.0f} % / {100 * max(shares):.0f} % | |")
  bw = figures.get("bandwidth")
  if bw:
    rows.append(f"| memory read bandwidth (1 GiB, best of numpy/jax sum), GB/s | | "
                f"{bw['read_GBps']:.1f} | |")
  return "\n".join(rows)


def main(args):
  import torch
  import jax
  import transformers
  torch.set_num_threads(2)
  from janus_jax import xla
  figures = {"argv": sys.argv[1:], "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "compiler_options": xla.compiler_options(), "cpu_avx512": xla.cpu_has_avx512(),
             "decode_compiler_options": xla.compiler_options(decode=True),
             "versions": {"jax": jax.__version__, "torch": torch.__version__,
                          "transformers": transformers.__version__, "python": platform.python_version()},
             "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "repeats": args.repeats}
  os.makedirs(args.workdir, exist_ok=True)
  QUIET.update(threshold=args.quiet_threshold, max_wait=args.quiet_wait)
  args.bandwidth = None
  if "bandwidth" in args.sections:
    figures["bandwidth"] = measure_bandwidth(args.repeats)
    args.bandwidth = figures["bandwidth"]["read_GBps"]
    print(f"[bandwidth] {json.dumps({k: round(v, 1) for k, v in figures['bandwidth'].items()})}",
          flush=True)
  if "image" in args.sections:
    figures["image"] = bench_image("image", MID, args)
  if "chat" in args.sections:
    figures["chat"] = bench_chat(MID, args)
  if "image1b" in args.sections:
    figures["image1b"] = bench_image("image1b", PRO_1B, args, sequential=True)
  print()
  print(table(figures))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(figures, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main(ARGS)
