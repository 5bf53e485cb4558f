"""python -m janus_jax.data.prepare KIND --input ... --output DIR: raw data -> a TFDS dataset.

KIND and --input:
  t2i            a JSONL of {"image": path, "caption": text} (or "file_name"/"text"/"prompt"),
                 or a folder holding one such JSONL; image paths are relative to the JSONL
                 (or --image-root). With --vq-checkpoint the images are pre-tokenised into
                 VQ codes (short side resized and centre-cropped, JANUS.md §3.1), batched
                 over the available devices, so training never runs the VQ encoder
                 (captions that share an image cost one read and one encoding of it).
  understanding  LLaVA-style JSON (a list of {"image": path | [paths], "conversations":
                 [{"from": "human"|"gpt", "value": ...}]}, "<image>" tags) or JSONL of the
                 same, or of {"messages": [{"role", "content"}], "images": [...]}.
  text           a JSONL of {"text": ...}.

Images that are not pre-tokenised are stored as their files' bytes and preprocessed when
read, exactly as at inference (understanding: long side resized, padded to square). With
--image-size N they are instead preprocessed once here to N x N and stored as PNG: a
smaller dataset and cheaper reads, still exact when N is the model's image size.

Unreadable or missing images, bad JSON, empty captions or texts, conversations without an
answer are skipped and counted; the run ends with a summary. Interrupted runs resume:
rerun the same command.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import glob
import io
import itertools
import json
import os
import sys
from typing import Iterator

import numpy as np

from janus_jax.data.examples import Skip, conversation_turns
from janus_jax.data.sources import features_for
from janus_jax.data.writer import DatasetWriter, PrepareError
from janus_jax.processor import (IMAGE_TOKEN, load_image, preprocess_generation_image,
                                 preprocess_image)

KINDS = ("t2i", "understanding", "text")
_IMAGE_KEYS = ("image", "file_name", "file", "path")
_CAPTION_KEYS = ("caption", "text", "prompt")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


# --- reading inputs -----------------------------------------------------------------------------
def _jsonl_file(path: str) -> str:
  if os.path.isdir(path):
    found = sorted(glob.glob(os.path.join(path, "*.jsonl")))
    if len(found) != 1:
      raise PrepareError(f"{path} holds {len(found)} .jsonl files; point --input at one.")
    return found[0]
  if not os.path.isfile(path):
    raise PrepareError(f"input {path} does not exist.")
  return path


def _json_lines(path: str) -> Iterator[dict | Skip]:
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        item = json.loads(line)
      except json.JSONDecodeError:
        yield Skip("bad_json")
        continue
      yield item if isinstance(item, dict) else Skip("bad_json")


def _first(item: dict, keys) -> object:
  return next((item[k] for k in keys if item.get(k) is not None), None)


def read_inputs(kind: str, path: str, image_root: str | None = None) -> Iterator[dict | Skip]:
  """The raw inputs of `kind`, in file order: dicts (see `prepare_item`) or Skip(reason)."""
  if kind == "understanding" and not path.endswith(".jsonl") and os.path.isfile(path):
    try:
      with open(path, encoding="utf-8") as f:
        items = json.load(f)
    except json.JSONDecodeError as e:
      raise PrepareError(f"{path} is not JSON ({e}); give LLaVA-style JSON or JSONL.") from None
    items = items.get("data", items) if isinstance(items, dict) else items
    items = (i if isinstance(i, dict) else Skip("bad_json") for i in items)
    source = path
  else:
    source = _jsonl_file(path)
    items = _json_lines(source)
  root = image_root or os.path.dirname(os.path.abspath(source))
  for n, item in enumerate(items):
    if isinstance(item, Skip):
      yield item
      continue
    out = {"id": str(item.get("id", n))}
    if kind == "text":
      out["text"] = _first(item, ("text", "content"))
    elif kind == "t2i":
      image = _first(item, _IMAGE_KEYS)
      out["image"] = os.path.join(root, image) if isinstance(image, str) else None
      out["caption"] = _first(item, _CAPTION_KEYS)
    else:
      images = _first(item, ("image", "images")) or []
      images = [images] if isinstance(images, str) else list(images)
      out["images"] = [os.path.join(root, i) if isinstance(i, str) else None for i in images]
      turns = item.get("conversations") or item.get("messages") or []
      out["conversation"] = [
          {"role": _ROLES.get(str(t.get("from", t.get("role", ""))).lower(), "?"),
           "content": str(t.get("value", t.get("content", ""))).replace("<image>", IMAGE_TOKEN)}
          for t in turns if isinstance(t, dict)
          and str(t.get("from", t.get("role", ""))).lower() != "system"]
    yield out


def count_inputs(kind: str, path: str) -> int | None:
  """Number of inputs, for the progress bar (None if not cheap to know)."""
  try:
    if kind == "understanding" and not path.endswith(".jsonl") and os.path.isfile(path):
      return None
    with open(_jsonl_file(path), "rb") as f:
      return sum(1 for line in f if line.strip())
  except (OSError, PrepareError):
    return None


# --- one input -> one record -----------------------------------------------------------------
def _uint8(pixels: np.ndarray) -> np.ndarray:
  """Inverse of the processor's normalisation (exact for 8-bit values)."""
  return np.clip(np.round((pixels * 0.5 + 0.5) * 255.0), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(_uint8(pixels)).save(buffer, format="PNG")
  return buffer.getvalue()


def _checked(path, read):
  """read(path) for an image file; Skip for missing or unreadable files."""
  if not isinstance(path, str) or not os.path.isfile(path):
    raise Skip("missing_image", str(path))
  try:
    return read(path)
  except (ValueError, OSError) as e:
    raise Skip("unreadable_image", str(e)) from None


def _stored_image(path, preprocess, size: int | None) -> bytes:
  """The bytes stored for an image: the file itself (checked to decode), or with `size`
  the preprocessed image as PNG."""
  if size:
    return _png(_checked(path, lambda p: preprocess(p, size)))
  _checked(path, load_image)
  with open(path, "rb") as f:
    return f.read()


def prepare_item(kind: str, item: dict, *, image_size: int | None, pretokenise: bool):
  """One raw input -> (record dict, the image path to pre-tokenise or None); raises Skip."""
  if kind == "text":
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
      raise Skip("empty_text")
    return {"text": text, "id": item["id"]}, None
  if kind == "t2i":
    caption = item.get("caption")
    if not isinstance(caption, str) or not caption.strip():
      raise Skip("empty_caption")
    record = {"caption": caption, "id": item["id"]}
    if pretokenise:                     # the image is read and encoded by `_pretokenise`
      if not isinstance(item["image"], str):
        raise Skip("missing_image", str(item["image"]))
      return record, item["image"]
    record["image"] = _stored_image(item["image"], preprocess_generation_image, image_size)
    return record, None
  turns = conversation_turns(item["conversation"])      # Skip: bad_roles, empty_turn, no_assistant_turn
  tags = sum(content.count(IMAGE_TOKEN) for _, content in turns)
  if tags and tags != len(item["images"]):
    raise Skip("image_count_mismatch", f"{tags} tags for {len(item['images'])} images")
  images = [_stored_image(path, preprocess_image, image_size) for path in item["images"]]
  conversation = [{"role": role, "content": content} for role, content in turns]
  return {"conversation": json.dumps(conversation, ensure_ascii=False), "images": images,
          "id": item["id"]}, None


# --- the preparation ---------------------------------------------------------------------------
def prepare(kind: str, input_path: str, output: str, *, vq_checkpoint: str | None = None,
            image_size: int | None = None, image_root: str | None = None,
            name: str | None = None, shard_size: int = 1000, batch_size: int = 16,
            threads: int = 8, overwrite: bool = False, progress: bool = True,
            max_chunks: int | None = None) -> dict | None:
  """Prepares `input_path` into `output` (see the module docstring). Returns the summary
  dict, or None when `max_chunks` new chunks were written and the run stopped early."""
  if kind not in KINDS:
    raise PrepareError(f"unknown kind {kind!r}; choose one of {KINDS}.")
  if vq_checkpoint and kind != "t2i":
    raise PrepareError("--vq-checkpoint pre-tokenises text-to-image data; drop it for "
                       f"{kind} data.")
  encoder = None
  if vq_checkpoint:
    from janus_jax.data.vq_codes import CodeEncoder
    encoder = CodeEncoder.from_checkpoint(vq_checkpoint, batch_size=batch_size)
    if image_size not in (None, encoder.image_size):
      raise PrepareError(f"--image-size {image_size} differs from the checkpoint's VQ image "
                         f"size {encoder.image_size}; drop --image-size.")
    image_size = encoder.image_size
  name = name or f"janus_{kind}"
  options = {"kind": kind, "input": os.path.abspath(input_path), "image_size": image_size,
             "image_root": image_root, "shard_size": shard_size, "name": name,
             "vq_checkpoint": os.path.abspath(vq_checkpoint) if vq_checkpoint else None}
  features = features_for(kind, encoder.num_tokens if encoder else None)
  writer = DatasetWriter(output, name=name, features=features, options=options,
                         overwrite=overwrite)
  from tqdm import tqdm
  bar = tqdm(total=count_inputs(kind, input_path), unit="ex", disable=not progress,
             desc=f"prepare {kind}")
  inputs = read_inputs(kind, input_path, image_root)
  new_chunks = resumed = 0
  known_codes = collections.OrderedDict()     # image path -> VQ codes, see _pretokenise
  work = lambda item: _attempt(kind, item, image_size, False)   # without an encoder
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for chunk in itertools.count():
      items = list(itertools.islice(inputs, shard_size))
      if not items:
        break
      bar.update(len(items))
      if writer.done(chunk):
        resumed += 1
        continue
      if max_chunks is not None and new_chunks >= max_chunks:
        bar.close()
        return None
      records, skipped = [], collections.Counter()
      if encoder is not None:
        done = _pretokenise(items, pool, image_size, encoder, known_codes)
      else:
        done = [o if isinstance(o, Skip) else o[0] for o in pool.map(work, items)]
      for outcome in done:
        if isinstance(outcome, Skip):
          skipped[outcome.reason] += 1
        else:
          records.append(outcome)
      writer.write_chunk(chunk, records, inputs=len(items), skipped=skipped)
      new_chunks += 1
      bar.set_postfix(written=sum(c["written"] for _, c in writer.chunk_counts()))
  bar.close()
  extra = {"resumed_chunks": resumed}
  if encoder is not None:
    extra["vq"] = {"image_size": encoder.image_size, "num_tokens": encoder.num_tokens,
                   "codebook_size": encoder.config.vq.codebook_size}
  return writer.finalize(extra=extra)


# Distinct images whose codes `_pretokenise` remembers (least recently used dropped): captions
# that share an image (COCO has five per image) cost one read and one encoding. At 576 codes
# an image (VQ-16 at 384 px) this holds at most ~38 MB.
KNOWN_CODES = 16384


def _pretokenise(items, pool, image_size: int, encoder, known: collections.OrderedDict) -> list:
  """t2i inputs -> records with "codes" (or Skip), each distinct image read and VQ-encoded
  once: within `items`, and across calls through `known` (path -> codes). Images are read
  and encoded a full encoder batch at a time."""
  outcomes = [_attempt("t2i", item, image_size, True) for item in items]
  paths = list(dict.fromkeys(o[1] for o in outcomes
                             if not isinstance(o, Skip) and o[1] not in known))
  read = lambda path: _skip_as_value(
      _checked, path, lambda p: preprocess_generation_image(p, image_size))
  fresh, failed = {}, {}
  for start in range(0, len(paths), encoder.batch_size):
    batch = paths[start:start + encoder.batch_size]
    pixels = dict(zip(batch, pool.map(read, batch)))
    failed.update((p, x) for p, x in pixels.items() if isinstance(x, Skip))
    good = [p for p in batch if p not in failed]
    if good:
      fresh.update(zip(good, encoder(np.stack([pixels[p] for p in good]))))
  out = []
  for outcome in outcomes:
    if isinstance(outcome, Skip):
      out.append(outcome)
      continue
    record, path = outcome
    if path in fresh:
      record["codes"] = fresh[path]
    elif path in known:
      record["codes"] = known[path]
      known.move_to_end(path)
    else:
      out.append(failed[path])          # the Skip of an unreadable or missing image
      continue
    out.append(record)
  known.update(fresh)
  while len(known) > KNOWN_CODES:
    known.popitem(last=False)
  return out


def _skip_as_value(fn, *args, **kwargs):
  """fn(*args, **kwargs), or the Skip it raised (so that thread-pool maps return it)."""
  try:
    return fn(*args, **kwargs)
  except Skip as e:
    return e


def _attempt(kind, item, image_size, pretokenise):
  if isinstance(item, Skip):
    return item
  return _skip_as_value(prepare_item, kind, item, image_size=image_size, pretokenise=pretokenise)


def summary_line(summary: dict) -> str:
  skipped = sum(summary["skipped"].values())
  reasons = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items())
  return (f"prepared {summary['written']} {summary['kind']} examples of {summary['inputs']} "
          f"inputs into {summary['dataset_dir']} ({summary['shards']} shards, "
          f"{summary['bytes'] / 2**20:.1f} MiB); skipped {skipped}"
          + (f" ({reasons})" if reasons else "")
          + (f"; resumed {summary['resumed_chunks']} chunks" if summary["resumed_chunks"] else ""))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m janus_jax.data.prepare",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("kind", choices=KINDS)
  parser.add_argument("--input", required=True, help="JSONL / JSON file or folder (see --help)")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--vq-checkpoint", help="t2i: pre-tokenise images with this checkpoint")
  parser.add_argument("--image-size", type=int,
                      help="store images preprocessed to this size (PNG)")
  parser.add_argument("--image-root", help="folder that image paths are relative to")
  parser.add_argument("--name", help="TFDS dataset name (default janus_<kind>)")
  parser.add_argument("--shard-size", type=int, default=1000, help="inputs per shard")
  parser.add_argument("--batch-size", type=int, default=16, help="images per VQ batch")
  parser.add_argument("--threads", type=int, default=8, help="image reading threads")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  from janus_jax.errors import CheckpointError
  if args.vq_checkpoint:   # the VQ encoder is the one program it compiles
    from janus_jax import xla
    xla.use_compilation_cache()
  try:
    summary = prepare(args.kind, args.input, args.output, vq_checkpoint=args.vq_checkpoint,
                      image_size=args.image_size, image_root=args.image_root, name=args.name,
                      shard_size=args.shard_size, batch_size=args.batch_size,
                      threads=args.threads, overwrite=args.overwrite,
                      progress=not args.no_progress)
  except (PrepareError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(summary_line(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
