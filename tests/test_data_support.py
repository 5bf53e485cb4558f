"""Helpers for the data tests (no tests here): a tiny config + processor, raw inputs of each
kind written to disk, a tiny converted checkpoint, and prepared datasets."""
from __future__ import annotations

import json
import os

import numpy as np

from tests import reference as ref

CAPTIONS = ["a red circle above a blue square", "a photo of a cat sitting on a mat",
            "the quick brown fox", "a green ball next to a dog", "two shapes: a circle, a square"]
QUESTIONS = ["What colour is the circle?", "How many shapes are there?", "Is there a triangle?"]
ANSWERS = ["red", "two", "no"]


def tiny_config():
  from janus_jax.config import JanusConfig
  return JanusConfig.preset("tiny").replace(**ref.TOKENS)


def tiny_processor(directory: str, config=None):
  from janus_jax.processor import Processor
  from tests.tiny_tokenizer import write_tokenizer
  os.makedirs(directory, exist_ok=True)
  write_tokenizer(directory, 512)
  return Processor.from_directory(directory, config or tiny_config())


def random_image(rng, height: int, width: int, directory: str, name: str) -> str:
  from PIL import Image
  path = os.path.join(directory, name)
  array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(array).save(path)
  return path


def write_jsonl(path: str, items) -> str:
  with open(path, "w") as f:
    for item in items:
      f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
  return path


def write_t2i_inputs(directory: str, n: int, seed: int = 0) -> str:
  """A folder of n images of assorted shapes and formats + captions.jsonl."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  items = []
  for i in range(n):
    h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    name = random_image(rng, h, w, directory, f"img{i}.{'png' if i % 2 else 'jpg'}")
    items.append({"image": os.path.basename(name), "caption": f"{CAPTIONS[i % 5]} number {i}"})
  return write_jsonl(os.path.join(directory, "captions.jsonl"), items)


def write_understanding_inputs(directory: str, n: int, seed: int = 0) -> str:
  """LLaVA-style JSON: n conversations, 0-2 images each, 1-2 rounds."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  items = []
  for i in range(n):
    images = [os.path.basename(random_image(rng, int(rng.integers(16, 48)),
                                            int(rng.integers(16, 48)), directory,
                                            f"u{i}_{k}.png")) for k in range(i % 3)]
    turns = []
    for r in range(1 + i % 2):
      q = QUESTIONS[(i + r) % 3] + f" item {i}"
      if r == 0 and images:
        q = "<image>\n" * len(images) + q
      turns += [{"from": "human", "value": q}, {"from": "gpt", "value": ANSWERS[(i + r) % 3]}]
    items.append({"id": f"u{i}", "image": images, "conversations": turns})
  path = os.path.join(directory, "llava.json")
  with open(path, "w") as f:
    json.dump(items, f)
  return path


def write_text_inputs(directory: str, n: int) -> str:
  os.makedirs(directory, exist_ok=True)
  return write_jsonl(os.path.join(directory, "text.jsonl"),
                     [{"text": f"document {i}: {CAPTIONS[i % 5]}"} for i in range(n)])


def random_params(config=None, seed: int = 0):
  """Random float32 params of every submodule, built in numpy from the abstract shapes:
  seconds instead of the half minute `init_params` compiles for. Kernels are scaled by
  1/sqrt(fan-in) so activations stay O(1); norms, biases and tables are perturbed."""
  from flax.traverse_util import flatten_dict, unflatten_dict
  from janus_jax.model import abstract_params
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flatten_dict(abstract_params(config or tiny_config())).items():
    name, shape = path[-1], leaf.shape
    noise = rng.standard_normal(shape).astype(np.float32)
    if name == "scale":
      value = 1.0 + 0.1 * noise
    elif name.endswith("bias"):
      value = 0.1 * noise
    elif name in ("embedding", "pos_embed"):
      value = noise * (1.0 if path[-2] == "quantize" else 0.5)
    else:
      stacked = "layers" in path or "blocks" in path
      fan_in = int(np.prod(shape[1 if stacked else 0:-1])) or 1
      value = noise / np.sqrt(fan_in)
    out[path] = value.astype(np.float32)
  return unflatten_dict(out)


def tiny_checkpoint(directory: str, config=None, seed: int = 0) -> str:
  """A converted checkpoint directory (random params + tokenizer) for `janus_jax.load`."""
  from janus_jax import checkpoint
  from tests.tiny_tokenizer import write_tokenizer
  config = config or tiny_config()
  tokenizer_dir = directory + "_tokenizer"
  os.makedirs(tokenizer_dir, exist_ok=True)
  write_tokenizer(tokenizer_dir, 512)
  checkpoint.save(directory, random_params(config, seed), config, source_dir=tokenizer_dir,
                  overwrite=True)
  return directory


def data_config(sources, **overrides):
  from janus_jax.data.pipeline import default_data_config
  cfg = default_data_config()
  cfg.sources = sources
  cfg.seq_len = 512
  cfg.max_images_per_row = 4
  cfg.read_threads = 2
  cfg.prefetch_batches = 0
  cfg.log_every = 0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def write_prepared(output: str, kind: str, records: list[dict], num_codes: int | None = None,
                   shard_size: int = 16) -> str:
  """A prepared dataset written directly from records (no raw inputs, no VQ)."""
  import collections
  from janus_jax.data.sources import features_for
  from janus_jax.data.writer import DatasetWriter
  writer = DatasetWriter(output, name=f"janus_{kind}", features=features_for(kind, num_codes),
                         options={"kind": kind}, overwrite=True)
  for i in range(0, len(records), shard_size):
    chunk = records[i:i + shard_size]
    writer.write_chunk(i // shard_size, chunk, inputs=len(chunk), skipped=collections.Counter())
  writer.finalize()
  return output


def png_bytes(rng, height: int, width: int) -> bytes:
  import io
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def segments(batch, processor):
  """[(kind, decoded text)] of every packed example of a host batch, row by row."""
  out = []
  for row in range(batch["segment_ids"].shape[0]):
    seg = batch["segment_ids"][row]
    for s in range(1, seg.max() + 1):
      where = seg == s
      out.append((int(batch["kind"][row][where][0]),
                  processor.decode(batch["input_ids"][row][where])))
  return out
