"""Packing example rows into fixed-length batch rows, and the grain stage that does it.

First-fit over one batch: every example goes into the first of the batch's rows that
still has room for its tokens (and, for understanding examples, its images); when an
example fits none, the batch is complete and that example opens the next one. Each
example is a segment: `segment_ids` 1, 2, ... within a row (0 = padding), `positions`
restarting at 0, so with block-diagonal causal attention (`Janus.decode(...,
segment_ids=...)`) a packed row computes exactly what its examples compute alone.
Without packing every row holds one example, padded to the row length.
"""
from __future__ import annotations

import collections
from typing import Any, Iterable

import numpy as np
import grain

from janus_jax.data.batch import KINDS, empty_batch
from janus_jax.data.examples import Row, Skipped

STATS_KEY = "stats"   # per-batch counters riding along with a host batch
KIND_NAMES = {value: name for name, value in KINDS.items()}


class BatchPacker:
  """Fills one host batch [rows, length] with examples, first fit.

  rows, length: batch shape; max_images: understanding images a row holds; pack: False
  puts one example per row.
  """

  def __init__(self, rows: int, length: int, max_images: int, image_size: int,
               pad_token_id: int, pack: bool = True):
    self.rows, self.length, self.max_images, self.pack = rows, length, max_images, pack
    self.batch = empty_batch(rows, length, max_images, image_size, pad_token_id)
    self.used = np.zeros(rows, np.int64)          # tokens filled per row
    self.images = np.zeros(rows, np.int64)        # images placed per row
    self.segments = np.zeros(rows, np.int64)      # examples per row
    self.num_examples = 0

  def add(self, row: Row) -> bool:
    """Places `row` in the first row with room; False (and no change) if none has."""
    n, m = len(row), len(row.images)
    if n > self.length or m > self.max_images:
      raise ValueError(f"an example of {n} tokens and {m} images cannot fit rows of "
                       f"{self.length} tokens and {self.max_images} images.")
    fits = (self.used + n <= self.length) & (self.images + m <= self.max_images)
    if not self.pack:
      fits &= self.segments == 0
    free = np.flatnonzero(fits)
    if not len(free):
      return False
    b = int(free[0])
    start, end = int(self.used[b]), int(self.used[b]) + n
    out = self.batch
    out["input_ids"][b, start:end] = row.input_ids
    out["gen_codes"][b, start:end] = row.gen_codes
    out["is_gen"][b, start:end] = row.is_gen
    out["targets"][b, start:end] = row.targets
    out["target_head"][b, start:end] = row.target_head
    out["loss_weights"][b, start:end] = row.loss_weights
    out["kind"][b, start:end] = row.kind
    out["positions"][b, start:end] = np.arange(n)
    out["segment_ids"][b, start:end] = self.segments[b] + 1
    if m:
      out["pixel_values"][b, self.images[b]:self.images[b] + m] = row.images
    self.used[b] = end
    self.images[b] += m
    self.segments[b] += 1
    self.num_examples += 1
    return True

  def full(self) -> bool:
    """True when no further example of any size can be added (every row has one when
    not packing; every row is at the length when packing)."""
    if not self.pack:
      return bool(np.all(self.segments > 0))
    return bool(np.all(self.used >= self.length))


def pack_rows(rows: Iterable[Row], *, num_rows: int, length: int, max_images: int,
              image_size: int, pad_token_id: int, pack: bool = True) -> dict[str, np.ndarray]:
  """Packs all `rows` into one batch (raises if they do not fit). For tests and tools."""
  packer = BatchPacker(num_rows, length, max_images, image_size, pad_token_id, pack)
  for i, row in enumerate(rows):
    if not packer.add(row):
      raise ValueError(f"example {i} does not fit the {num_rows} rows.")
  return packer.batch


# --- the grain stage ---------------------------------------------------------------------
class PackedBatchIterDataset(grain.IterDataset):
  """Rows (or `Skipped` markers) -> host batches: dicts of numpy arrays [rows, length]
  plus `STATS_KEY`: a dict of counters for the examples consumed by that batch."""

  def __init__(self, parent: grain.IterDataset, **packer_kwargs: Any):
    super().__init__(parent)
    self._packer_kwargs = packer_kwargs

  def __iter__(self):
    return PackedBatchIterator(self._parent.__iter__(), self._packer_kwargs)

  def __str__(self) -> str:
    return "PackedBatchIterDataset"


class PackedBatchIterator(grain.DatasetIterator):
  """State: the parent's state before the first example of the next batch.

  The example that closed a batch (it fit none of its rows) is kept in memory to open
  the next one; after `set_state` it is simply read again, so a restored iterator
  yields the same batches as one that was never interrupted.
  """

  def __init__(self, parent: grain.DatasetIterator, packer_kwargs: dict):
    super().__init__(parent)
    self._packer_kwargs = packer_kwargs
    self._pending: Row | None = None
    self._start_state = parent.get_state()
    self._exhausted = False

  def __next__(self) -> dict[str, Any]:
    if self._exhausted:
      raise StopIteration
    packer = BatchPacker(**self._packer_kwargs)
    stats = collections.Counter()

    def place(row: Row) -> bool:
      if not packer.add(row):
        return False
      if row.truncated:
        stats[f"truncated/{row.truncated}"] += 1
      stats[f"examples/{KIND_NAMES[row.kind]}"] += 1
      return True

    if self._pending is not None:
      place(self._pending)
      self._pending = None
    while not packer.full():
      before = self._parent.get_state()
      try:
        element = next(self._parent)
      except StopIteration:
        self._exhausted = True
        self._start_state = self._parent.get_state()
        if packer.num_examples == 0:
          raise
        break
      if isinstance(element, Skipped):
        stats[f"skipped/{element.reason}"] += 1
        continue
      if not place(element):
        self._pending, self._start_state = element, before
        break
    else:
      self._start_state = self._parent.get_state()
    batch = dict(packer.batch)
    batch[STATS_KEY] = dict(stats)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._start_state}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._start_state = state["parent"]
    self._pending = None
    self._exhausted = False

  def __str__(self) -> str:
    return "PackedBatchIterator"
