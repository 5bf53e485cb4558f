"""Resumable writing of a prepared dataset: ArrayRecord shards + TFDS metadata.

Layout of an output directory:

  OUTPUT/janus_prepare.json          kind, options, counts of written and skipped inputs
  OUTPUT/<name>/1.0.0/               a TFDS dataset (file_format array_record):
      dataset_info.json, features.json, <name>-train.array_record-00000-of-000NN, ...
  OUTPUT/.staging/                   while preparing: one finished shard per input chunk

Each chunk of `shard_size` inputs is written to a temporary file and renamed when
complete, with a small JSON of its counts; a rerun skips the chunks already there, so an
interrupted preparation resumes where it stopped. `finalize` moves the shards into the
TFDS layout and writes its metadata (`tfds.folder_dataset.write_metadata`), after which
`tfds.data_source(name, data_dir=OUTPUT)` and `tfds.builder_from_directory` read it —
without TensorFlow.
"""
from __future__ import annotations

import collections
import json
import os
import shutil

from janus_jax.data.sources import PREPARE_FILE

STAGING = ".staging"
VERSION = "1.0.0"


class PrepareError(ValueError):
  """A preparation that cannot go on as asked; the message says what to do."""


class DatasetWriter:
  """Writes chunks of serialised examples; `finalize()` makes the TFDS dataset.

  options: everything that determines the output (kind, inputs, sizes, checkpoint); a
  resumed run must pass the same, or `overwrite` to start again.
  """

  def __init__(self, output: str, *, name: str, features, options: dict,
               overwrite: bool = False):
    self.output, self.name, self.features = os.path.abspath(output), name, features
    self.options = json.loads(json.dumps(options, default=str))
    self.staging = os.path.join(self.output, STAGING)
    self.version_dir = os.path.join(self.output, name, VERSION)
    finished = os.path.isfile(os.path.join(self.output, PREPARE_FILE))
    if overwrite:
      for path in (self.staging, os.path.join(self.output, name),
                   os.path.join(self.output, PREPARE_FILE)):
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)
    elif finished:
      raise PrepareError(f"{self.output} already holds a prepared dataset; choose another "
                         "--output or pass --overwrite.")
    os.makedirs(self.staging, exist_ok=True)
    options_file = os.path.join(self.staging, "options.json")
    if os.path.isfile(options_file):
      with open(options_file) as f:
        previous = json.load(f)
      if previous != self.options:
        changed = sorted(k for k in set(previous) | set(self.options)
                         if previous.get(k) != self.options.get(k))
        raise PrepareError(f"{self.output} holds an unfinished preparation with other "
                           f"options ({', '.join(changed)}); rerun it with the same ones or "
                           "pass --overwrite to start again.")
    else:
      _write_json(options_file, self.options)

  def _chunk_path(self, chunk: int, suffix: str) -> str:
    return os.path.join(self.staging, f"chunk-{chunk:06d}.{suffix}")

  def done(self, chunk: int) -> bool:
    """True if chunk `chunk` was written by this or an earlier run."""
    return os.path.isfile(self._chunk_path(chunk, "json"))

  def write_chunk(self, chunk: int, examples: list[dict], *, inputs: int,
                  skipped: collections.Counter) -> None:
    """Serialises `examples` (dicts of the features) as chunk `chunk`, atomically."""
    from array_record.python import array_record_module
    path = self._chunk_path(chunk, "array_record")
    tmp = path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for example in examples:
      writer.write(self.features.serialize_example(example))
    writer.close()
    os.replace(tmp, path)
    _write_json(self._chunk_path(chunk, "json"),
                {"inputs": inputs, "written": len(examples), "skipped": dict(skipped)})

  def chunk_counts(self) -> list[tuple[int, dict]]:
    out = []
    for entry in sorted(os.listdir(self.staging)):
      if entry.startswith("chunk-") and entry.endswith(".json"):
        with open(os.path.join(self.staging, entry)) as f:
          out.append((int(entry[6:12]), json.load(f)))
    return out

  def finalize(self, *, description: str = "", extra: dict | None = None) -> dict:
    """Moves the shards into the TFDS layout, writes the metadata and the summary."""
    import tensorflow_datasets as tfds
    chunks = self.chunk_counts()
    summary = {"kind": self.options.get("kind"), "name": self.name, "inputs": 0, "written": 0,
               "skipped": collections.Counter(), "options": self.options, **(extra or {})}
    nonempty = []
    for chunk, counts in chunks:
      summary["inputs"] += counts["inputs"]
      summary["written"] += counts["written"]
      summary["skipped"].update(counts["skipped"])
      if counts["written"]:
        nonempty.append((chunk, counts["written"]))
    summary["skipped"] = dict(sorted(summary["skipped"].items()))
    if not nonempty:
      raise PrepareError(f"no example could be written (skipped: {summary['skipped']}); "
                         "check the input paths and format.")
    os.makedirs(self.version_dir, exist_ok=True)
    lengths, num_bytes = [], 0
    for i, (chunk, written) in enumerate(nonempty):
      shard = os.path.join(self.version_dir, f"{self.name}-train.array_record-"
                           f"{i:05d}-of-{len(nonempty):05d}")
      source = self._chunk_path(chunk, "array_record")
      if os.path.isfile(source) or not os.path.isfile(shard):   # else moved by an earlier try
        os.replace(source, shard)
      lengths.append(written)
      num_bytes += os.path.getsize(shard)
    split = tfds.core.SplitInfo(name="train", shard_lengths=lengths, num_bytes=num_bytes)
    tfds.folder_dataset.write_metadata(data_dir=self.version_dir, features=self.features,
                                       split_infos=[split], check_data=False,
                                       description=description or f"janus-jax {self.name}")
    summary["shards"] = len(nonempty)
    summary["bytes"] = num_bytes
    summary["dataset_dir"] = self.version_dir
    _write_json(os.path.join(self.output, PREPARE_FILE), summary)
    shutil.rmtree(self.staging)
    return summary


def _write_json(path: str, data) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True, default=str)
  os.replace(tmp, path)
