"""python -m janus_jax.generate --checkpoint DIR (--prompt TEXT | --prompts-file FILE) [options]

Text -> images with classifier-free guidance, written as PNG files:

  --prompt (repeatable) or a text --prompts-file (one prompt a line):
      OUT/<prompt index:04d>_<image index:03d>.png, OUT/grid.png, OUT/settings.json
  a GenEval evaluation_metadata.jsonl as --prompts-file (the layout GenEval's
  evaluation/evaluate_images.py reads, as its generation/diffusers_generate.py writes it):
      OUT/<prompt index:05d>/metadata.jsonl   that prompt's metadata line
      OUT/<prompt index:05d>/samples/<image index:05d>.png
      OUT/<prompt index:05d>/grid.png
      OUT/settings.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from janus_jax import cli_common

GRID_MAX_IMAGES = 256   # the run's grid shows at most this many images (the first ones)
GRID_PAD = 2            # pixels between grid cells
DECODE_CHUNK = 64       # images VQ-decoded and written per step


def _parser():
  parser = cli_common.ArgumentParser(
      prog="python -m janus_jax.generate",
      description="Text-to-image sampling with classifier-free guidance -> PNG files.",
      epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  cli_common.add_model_args(parser)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--prompt", action="append", metavar="TEXT",
                      help="what to draw (repeat for several prompts)")
  source.add_argument("--prompts-file", metavar="FILE",
                      help="one prompt a line, or a GenEval evaluation_metadata.jsonl")
  parser.add_argument("--num-images", type=cli_common.positive_int, default=4, metavar="N",
                      help="images per prompt (default 4)")
  parser.add_argument("--cfg-weight", type=float, default=5.0, metavar="W",
                      help="guidance: uncond + W * (cond - uncond) (default 5)")
  parser.add_argument("--temperature", type=cli_common.non_negative_float, default=1.0,
                      metavar="T", help="sampling temperature; 0 is greedy (default 1)")
  parser.add_argument("--top-k", type=cli_common.positive_int, default=None, metavar="K",
                      help="sample among the K likeliest image tokens (default: all)")
  parser.add_argument("--top-p", type=cli_common.probability, default=None, metavar="P",
                      help="nucleus sampling mass (default: off)")
  parser.add_argument("--batch-size", type=cli_common.positive_int, default=16, metavar="B",
                      help="images per compiled batch (default 16)")
  parser.add_argument("--out", default="outputs", metavar="DIR",
                      help="output directory, created if needed (default ./outputs)")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  return parser


# --- prompts ----------------------------------------------------------------------------------
def read_prompts_file(path: str) -> tuple[list[str], list[str] | None]:
  """-> (prompts, GenEval metadata lines or None).

  GenEval when the name ends in .jsonl or the first non-empty line is a JSON object;
  then every non-empty line must be a JSON object with a non-empty "prompt" string.
  Otherwise one prompt a line; blank lines are skipped.
  """
  cli_common.check_readable_file(path, "prompts file")
  with open(path, encoding="utf-8") as f:
    lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
  if not lines:
    raise ValueError(f"prompts file {path!r} has no prompts.")
  if not (path.endswith(".jsonl") or _json_object(lines[0][1]) is not None):
    return [line for _, line in lines], None
  prompts = []
  for number, line in lines:
    metadata = _json_object(line)
    prompt = metadata.get("prompt") if metadata is not None else None
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f"{path} line {number}: expected a JSON object with a non-empty "
                       "\"prompt\" string (GenEval evaluation_metadata.jsonl format).")
    prompts.append(prompt)
  return prompts, [line for _, line in lines]


def _json_object(text: str) -> dict | None:
  try:
    value = json.loads(text)
  except ValueError:
    return None
  return value if isinstance(value, dict) else None


# --- files ------------------------------------------------------------------------------------
def image_path(out: str, prompt: int, image: int, geneval: bool) -> str:
  if geneval:
    return os.path.join(out, f"{prompt:05d}", "samples", f"{image:05d}.png")
  return os.path.join(out, f"{prompt:04d}_{image:03d}.png")


def grid_layout(num_prompts: int, num_images: int) -> tuple[int, int]:
  """-> (images shown in the run's grid, columns): one row per prompt when that reads
  well, else as square as possible; at most GRID_MAX_IMAGES, whole rows."""
  if num_prompts > 1 and 2 <= num_images <= 8:
    return min(num_prompts, GRID_MAX_IMAGES // num_images) * num_images, num_images
  shown = min(num_prompts * num_images, GRID_MAX_IMAGES)
  return shown, math.ceil(math.sqrt(shown))


def tile(images: np.ndarray, columns: int) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 image, row-major, GRID_PAD black pixels apart."""
  n, h, w, c = images.shape
  columns = min(columns, n)
  rows = math.ceil(n / columns)
  canvas = np.zeros((rows * (h + GRID_PAD) + GRID_PAD, columns * (w + GRID_PAD) + GRID_PAD, c),
                    np.uint8)
  for k, image in enumerate(images):
    top, left = (GRID_PAD + (h + GRID_PAD) * i for i in divmod(k, columns))
    canvas[top:top + h, left:left + w] = image
  return canvas


def _save_png(array: np.ndarray, path: str) -> None:
  from PIL import Image
  Image.fromarray(array).save(path)


def _prepare_geneval_dirs(out: str, metadata_lines: list[str]) -> None:
  """OUT/<index>/samples/ and OUT/<index>/metadata.jsonl (the input line, one JSON object,
  which GenEval reads back with json.load)."""
  for index, line in enumerate(metadata_lines):
    os.makedirs(os.path.join(out, f"{index:05d}", "samples"), exist_ok=True)
    with open(os.path.join(out, f"{index:05d}", "metadata.jsonl"), "w", encoding="utf-8") as f:
      f.write(line + "\n")


# --- the run ----------------------------------------------------------------------------------
def _generate(args) -> str:
  if args.prompt is not None:
    prompts, metadata_lines = list(args.prompt), None
  else:
    prompts, metadata_lines = read_prompts_file(args.prompts_file)
  for i, prompt in enumerate(prompts):
    if not prompt.strip():
      raise ValueError(f"prompt {i} is empty; describe the image to generate.")
  geneval = metadata_lines is not None
  if os.path.isdir(args.out) and os.listdir(args.out):
    print(f"note: {args.out} is not empty; files of the same names are replaced, others kept.",
          file=sys.stderr)
  os.makedirs(args.out, exist_ok=True)

  from tqdm import tqdm
  from janus_jax import sampling
  start = time.perf_counter()
  p, mesh, load_s = cli_common.load_model(args)
  timings = {"load_s": load_s}
  codes = sampling.generate_image_codes(
      p, prompts, num_images=args.num_images, cfg_weight=args.cfg_weight,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
      batch_size=args.batch_size, mesh=mesh, progress=not args.quiet, timings=timings)

  decode_start = time.perf_counter()
  if geneval:
    _prepare_geneval_dirs(args.out, metadata_lines)
  rows = [(i, n) for i in range(len(prompts)) for n in range(args.num_images)]
  grid_count, columns = grid_layout(len(prompts), args.num_images)
  grid_images, prompt_images = [], []
  with tqdm(total=len(rows), desc="writing PNGs", unit="img", disable=args.quiet) as bar:
    for first in range(0, len(rows), DECODE_CHUNK):
      images = sampling.decode_images(p, codes[first:first + DECODE_CHUNK])
      for (i, n), image in zip(rows[first:first + DECODE_CHUNK], images):
        _save_png(image, image_path(args.out, i, n, geneval))
        if geneval:   # rows are prompt-major: a prompt's images arrive together
          prompt_images.append(image)
          if n == args.num_images - 1:
            _save_png(tile(np.stack(prompt_images), math.ceil(math.sqrt(len(prompt_images)))),
                      os.path.join(args.out, f"{i:05d}", "grid.png"))
            prompt_images = []
        elif len(grid_images) < grid_count:
          grid_images.append(image)
      bar.update(len(images))
  if not geneval:
    _save_png(tile(np.stack(grid_images), columns), os.path.join(args.out, "grid.png"))
  timings["decode_write_s"] = time.perf_counter() - decode_start
  timings["total_s"] = time.perf_counter() - start
  timings["images_per_s"] = len(rows) / max(timings["generate_s"], 1e-9)
  height, width = images.shape[1:3]
  _write_settings(args, prompts, geneval, len(rows), (height, width),
                  None if geneval else len(grid_images), timings, mesh)
  return _summary(args, prompts, geneval, len(rows), (height, width), timings)


def _write_settings(args, prompts, geneval, count, size, grid_images, timings, mesh) -> None:
  import jax
  import janus_jax
  settings = {
      "command": "python -m janus_jax.generate",
      "version": janus_jax.__version__,
      "checkpoint": os.path.abspath(args.checkpoint),
      "dtype": args.dtype,
      "prompts_file": None if args.prompts_file is None else os.path.abspath(args.prompts_file),
      "layout": "geneval" if geneval else "flat",
      "prompts": prompts,
      "num_images": args.num_images,
      "cfg_weight": args.cfg_weight,
      "temperature": args.temperature,
      "top_k": args.top_k,
      "top_p": args.top_p,
      "seed": args.seed,
      "batch_size": args.batch_size,
      "mesh": None if mesh is None else dict(mesh.shape),
      "backend": jax.default_backend(),
      "device_count": jax.device_count(),
      "images": count,
      "image_size": list(size),
      "grid_images": grid_images,
      # compile_s: tracing + XLA compilation of the sampling program; generate_s: running
      # it (prefill + all image tokens); decode_write_s: VQ decode (its first call compiles)
      # and PNG writing. images_per_s = images / generate_s.
      "timings": {k: round(v, 4) for k, v in timings.items()},
  }
  with open(os.path.join(args.out, "settings.json"), "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2, ensure_ascii=False)
    f.write("\n")


def _summary(args, prompts, geneval, count, size, t) -> str:
  last = len(prompts) - 1
  if geneval:
    files = (f"in the GenEval layout 00000..{last:05d}/ (metadata.jsonl, grid.png, "
             f"samples/00000.png..), settings.json")
  else:
    files = f"as 0000_000.png..{last:04d}_{args.num_images - 1:03d}.png, grid.png, settings.json"
  return (f"wrote {count} images ({size[1]}x{size[0]}; {len(prompts)} prompts x "
          f"{args.num_images}) to {args.out} {files}; load {t['load_s']:.1f} s, compile "
          f"{t['compile_s']:.2f} s, generate {t['generate_s']:.2f} s "
          f"({t['images_per_s']:.2f} images/s), decode+write {t['decode_write_s']:.1f} s")


def main(argv=None) -> int:
  args = cli_common.parse(_parser(), argv)
  if isinstance(args, int):
    return args
  from janus_jax import xla
  xla.use_compilation_cache()
  return cli_common.run(lambda: _generate(args))


if __name__ == "__main__":
  sys.exit(main())
