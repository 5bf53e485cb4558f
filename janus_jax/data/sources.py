"""Where examples come from: prepared datasets and TFDS datasets, as random-access sources.

A prepared dataset (`python -m janus_jax.data.prepare`) is a TFDS dataset in ArrayRecord
format; `open_source` reads it, or any TFDS dataset, through `tfds.data_source`
(random access, no TensorFlow needed). Records are then turned into one canonical
example per kind by `decode_record`:

  understanding  {"conversation": [{"role", "content"}, ...], "images": [bytes | uint8 array]}
  text           {"text": str}
  t2i            {"caption": str | [str, ...], "codes": int32 [N] | None,
                  "image": bytes | uint8 array | None}

Record fields of other datasets are mapped with a source's `fields`, e.g.
{"caption": "captions/text", "image": "image"} (a "/" walks into nested features).
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
from typing import Any, Mapping

import numpy as np

from janus_jax.data.batch import KINDS
from janus_jax.data.examples import Skip

PREPARE_FILE = "janus_prepare.json"   # written by `prepare` next to the TFDS dataset dir
DEFAULT_FIELDS = {
  "understanding": {"conversation": "conversation", "images": "images"},
  "text": {"text": "text"},
  "t2i": {"caption": "caption", "codes": "codes", "image": "image"},
}


def features_for(kind: str, num_codes: int | None = None):
  """The TFDS features of a prepared dataset of `kind`.

  t2i stores VQ codes (int32 [num_codes]) when pre-tokenised, else the image file's bytes.
  Understanding stores the conversation as JSON text and the images' encoded bytes.
  """
  import tensorflow_datasets as tfds
  f = tfds.features
  if kind == "text":
    spec = {"text": f.Text()}
  elif kind == "understanding":
    spec = {"conversation": f.Text(), "images": f.Tensor(shape=(None,), dtype=np.object_)}
  elif kind == "t2i":
    spec = {"caption": f.Text()}
    if num_codes:
      spec["codes"] = f.Tensor(shape=(num_codes,), dtype=np.int32)
    else:
      spec["image"] = f.Tensor(shape=(), dtype=np.object_)
  else:
    raise ValueError(f"unknown data kind {kind!r}; choose one of {sorted(KINDS)}.")
  spec["id"] = f.Text()
  return f.FeaturesDict(spec)


@dataclasses.dataclass
class Source:
  """An opened source: `data` supports len() and [index] -> record dict."""
  kind: str
  name: str
  data: Any
  fields: dict
  weight: float
  meta: dict

  @property
  def feature_names(self) -> set[str] | None:
    """Top-level feature names of the records (None if the source does not say)."""
    info = getattr(self.data, "dataset_info", None)
    return None if info is None else set(info.features.keys())

  @property
  def has_codes(self) -> bool:
    """False for a t2i source whose records hold images, not pre-tokenised codes."""
    names = self.feature_names
    return names is None or self.fields["codes"].split("/")[0] in names


def _version_dir(path: str) -> str:
  """A prepared OUTPUT dir, a TFDS dataset dir or a version dir -> the version dir."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  for depth in (1, 2):
    pattern = os.path.join(path, *["*"] * depth, "dataset_info.json")
    found = sorted(glob.glob(pattern))
    if len(found) == 1:
      return os.path.dirname(found[0])
    if len(found) > 1:
      raise ValueError(f"{path} holds several TFDS datasets ({', '.join(found[:3])}); "
                             "point `path` at one of their version directories.")
  if os.path.isdir(os.path.join(path, ".staging")):
    raise ValueError(f"{path} is an unfinished preparation; run the same "
                         "`python -m janus_jax.data.prepare` command again to finish it.")
  raise ValueError(f"{path} holds no prepared dataset (no dataset_info.json); prepare it "
                     "with `python -m janus_jax.data.prepare`.")


def open_source(spec: Mapping, index: int = 0) -> Source:
  """Opens one entry of `data_cfg.sources`.

  spec: {"kind", "weight", and either "path" (a prepared dataset) or "tfds" (a TFDS name,
  with "split" and optional "data_dir"); optional "fields", "name", "split"}.
  """
  spec = dict(spec)
  kind = spec.get("kind")
  if kind not in KINDS:
    raise ValueError(f"source {index}: kind={kind!r}; choose one of {sorted(KINDS)}.")
  weight = float(spec.get("weight", 1.0))
  if not weight > 0:
    raise ValueError(f"source {index}: weight must be > 0, got {weight}.")
  import tensorflow_datasets as tfds
  meta = {}
  split = spec.get("split") or "train"
  if spec.get("path"):
    directory = _version_dir(spec["path"])
    meta_file = os.path.join(os.path.dirname(os.path.dirname(directory)), PREPARE_FILE)
    if os.path.isfile(meta_file):
      with open(meta_file) as f:
        meta = json.load(f)
      if meta.get("kind") not in (None, kind):
        raise ValueError(f"source {index}: {spec['path']} holds {meta['kind']} data, "
                                 f"not {kind}; fix the source's kind.")
    data = tfds.builder_from_directory(directory).as_data_source(split=split)
    name = spec.get("name") or os.path.basename(os.path.dirname(directory))
  elif spec.get("tfds"):
    data = tfds.data_source(spec["tfds"], split=split, data_dir=spec.get("data_dir"),
                download=False)
    name = spec.get("name") or spec["tfds"]
  else:
    raise ValueError(f"source {index}: give `path` (a prepared dataset) or `tfds` "
                         "(a TFDS dataset name).")
  if len(data) == 0:
    raise ValueError(f"source {index} ({name}) is empty.")
  fields = {**DEFAULT_FIELDS[kind], **dict(spec.get("fields") or {})}
  return Source(kind, name, data, fields, weight, meta)


# --- records -> canonical examples ---------------------------------------------------------
def _get(record: Mapping, path: str):
  value = record
  for key in path.split("/"):
    if not isinstance(value, Mapping) or key not in value:
      return None
    value = value[key]
  return value


def _text(value) -> str | list[str] | None:
  if value is None:
    return None
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, str):
    return value
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return _text(value.item())
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_text(v) for v in value]
  raise Skip("bad_record", f"expected text, got {type(value).__name__}")


def decode_record(kind: str, record: Mapping, fields: Mapping[str, str]) -> dict:
  """A source record -> the canonical example of `kind` (see the module docstring)."""
  if kind == "text":
    text = _text(_get(record, fields["text"]))
    if isinstance(text, list):
      text = "\n".join(text)
    return {"text": text}
  if kind == "t2i":
    codes = _get(record, fields["codes"])
    image = _get(record, fields["image"])
    if codes is None and image is None:
      raise Skip("bad_record", "a t2i record needs codes or an image")
    return {"caption": _text(_get(record, fields["caption"])),
        "codes": None if codes is None else np.asarray(codes, np.int32),
        "image": image}
  conversation = _get(record, fields["conversation"])
  if isinstance(conversation, (bytes, str)):
    try:
      conversation = json.loads(_text(conversation))
    except json.JSONDecodeError:
      raise Skip("bad_record", "conversation is not JSON") from None
  if not isinstance(conversation, list) or not all(isinstance(t, dict) for t in conversation):
    raise Skip("bad_record", "conversation is not a list of turns")
  images = _get(record, fields["images"])
  images = [] if images is None else list(images)
  return {"conversation": conversation, "images": images}


def open_image(data):
  """Encoded image bytes (or a uint8 array, or a PIL image) -> RGB PIL image.

  EXIF orientation is applied, as `processor.load_image` does for files.
  """
  from PIL import Image, ImageOps
  from janus_jax.processor import load_image
  if isinstance(data, (bytes, bytearray, np.bytes_)):
    try:
      with Image.open(io.BytesIO(bytes(data))) as f:
        f.load()
        data = ImageOps.exif_transpose(f)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
      raise Skip("unreadable_image", str(e)) from None
  try:
    return load_image(data)
  except ValueError as e:
    raise Skip("unreadable_image", str(e)) from None
