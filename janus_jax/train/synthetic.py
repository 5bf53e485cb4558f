"""A deterministic synthetic data set in the batch.py format, for tests and benchmarks.

Same interface as `janus_jax.data.pipeline.build_train_iterator`: `next()` gives a dict
of global jax.Arrays with the batch axis sharded over ('data', 'fsdp'); `get_state()` /
`set_state()` make it resumable; `stats()` counts. Each process builds only the rows its
devices hold, so several processes share one global batch without exchanging data.

The data set is a fixed pool of `num_examples` examples per kind, made from
`dataset_seed` (so it is the same for every run seed); batch i, row r draws its examples
from (seed, i, r) with the kind chosen by `ratios`. Kinds, following JANUS.md §6.5:
  understanding  [bos] <image>*P question answer [eos]; loss on answer and eos (lm_head)
  text           [bos] tokens [eos]; loss on every token (lm_head)
  t2i            [bos] caption [boi] codes; loss on the codes (gen_head)
With `packing`, examples are appended to a row while they fit (positions restart, new
segment id); otherwise one example per row, padded.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from janus_jax import sharding as sharding_lib
from janus_jax.config import JanusConfig
from janus_jax.data.batch import (HEAD_IMAGE, HEAD_TEXT, KIND_T2I, KIND_TEXT,
                                  KIND_UNDERSTANDING, KINDS, empty_batch)

_FIRST_TEXT_ID = 16   # below: special tokens of the tiny config


def default_config():
  import ml_collections
  return ml_collections.ConfigDict(dict(
      source="synthetic", seq_len=64, ratios=dict(understanding=1, text=1, t2i=1),
      num_examples=8, dataset_seed=1234, caption_len=4, question_len=4, answer_len=4,
      text_len=12, image_tokens=16, max_images=1, packing=True, nan_at_batch=-1))


class SyntheticIterator:
  """Iterator of global batches; see the module docstring."""

  def __init__(self, data_cfg, *, model_config: JanusConfig, global_batch_size: int,
               mesh: Mesh, seed: int, process_index=None, process_count=None):
    self.cfg, self.model_config, self.mesh = data_cfg, model_config, mesh
    self.batch_size, self.seed, self.index = global_batch_size, seed, 0
    weights = np.array([float(data_cfg.ratios.get(k, 0)) for k in KINDS], np.float64)
    if weights.sum() <= 0:
      raise ValueError(f"data ratios {dict(data_cfg.ratios)} are all zero.")
    self.kind_probs = weights / weights.sum()
    self.pool = self._make_pool()
    for kind, examples in self.pool.items():
      longest = max(len(e["ids"]) for e in examples)
      if longest > data_cfg.seq_len:
        raise ValueError(f"synthetic {kind} examples need {longest} positions; seq_len is "
                         f"{data_cfg.seq_len}.")
    self.rows_built = 0

  # --- the fixed pool of examples ---------------------------------------------------------
  def _make_pool(self):
    cfg, mc = self.cfg, self.model_config
    rng = np.random.default_rng(cfg.dataset_seed)
    vocab, codebook = mc.llm.vocab_size, mc.vq.codebook_size
    text = lambda n: rng.integers(_FIRST_TEXT_ID, vocab, n).tolist()
    size = mc.vision.image_size
    pool = {k: [] for k in KINDS}
    for _ in range(cfg.num_examples):
      pixels = rng.uniform(-1, 1, (size, size, 3)).astype(np.float32)
      ids = ([mc.bos_token_id] + [mc.image_token_id] * mc.num_image_tokens
             + text(cfg.question_len))
      answer = text(cfg.answer_len) + [mc.eos_token_id]
      pool["understanding"].append(dict(
          ids=ids + answer, scored_from=len(ids) - 1, pixels=pixels))
      body = text(cfg.text_len) + [mc.eos_token_id]
      pool["text"].append(dict(ids=[mc.bos_token_id] + body, scored_from=0))
      caption = [mc.bos_token_id] + text(cfg.caption_len) + [mc.boi_token_id]
      codes = rng.integers(0, codebook, cfg.image_tokens).tolist()
      pool["t2i"].append(dict(ids=caption + codes, scored_from=len(caption) - 1,
                              codes_from=len(caption)))
    return pool

  # --- rows ---------------------------------------------------------------------------------
  def _example(self, rng):
    kind = list(KINDS)[rng.choice(len(KINDS), p=self.kind_probs)]
    return kind, self.pool[kind][rng.integers(len(self.pool[kind]))]

  def _fill_row(self, out, row: int, batch_index: int):
    """Writes row `row` of batch `batch_index` into the batch.py arrays `out` (row 0)."""
    cfg, mc = self.cfg, self.model_config
    rng = np.random.default_rng([self.seed, batch_index, row])
    start, segment, images = 0, 0, 0
    while True:
      kind, ex = self._example(rng)
      n = len(ex["ids"])
      needs_image = kind == "understanding"
      if start + n > cfg.seq_len or (needs_image and images >= cfg.max_images):
        if segment == 0:
          raise ValueError("a synthetic example does not fit an empty row")
        break
      segment += 1
      sl = slice(start, start + n)
      ids = np.asarray(ex["ids"], np.int32)
      targets = np.append(ids[1:], mc.pad_token_id)
      scored = np.zeros(n, bool)
      scored[ex["scored_from"]:n - 1] = True
      if kind == "t2i":
        is_gen = np.zeros(n, bool)
        is_gen[ex["codes_from"]:] = True
        out["gen_codes"][0, sl] = np.where(is_gen, ids, 0)
        out["is_gen"][0, sl] = is_gen
        out["input_ids"][0, sl] = np.where(is_gen, mc.pad_token_id, ids)
        out["target_head"][0, sl] = HEAD_IMAGE
      else:
        out["input_ids"][0, sl] = ids
        out["target_head"][0, sl] = HEAD_TEXT
      if needs_image:
        out["pixel_values"][0, images] = ex["pixels"]
        images += 1
      out["targets"][0, sl] = np.where(scored, targets, 0)
      out["loss_weights"][0, sl] = scored.astype(np.float32)
      out["kind"][0, sl] = {"understanding": KIND_UNDERSTANDING, "text": KIND_TEXT,
                            "t2i": KIND_T2I}[kind]
      out["positions"][0, sl] = np.arange(n)
      out["segment_ids"][0, sl] = segment
      start += n
      if not cfg.packing:
        break
    if batch_index == cfg.nan_at_batch:
      out["loss_weights"][0] = np.nan    # a poisoned batch, for the non-finite-loss test

  def _rows(self, rows, batch_index: int):
    """numpy batch.py dict for the given global rows (a range)."""
    mc = self.model_config
    size = mc.vision.image_size
    out = empty_batch(len(rows), self.cfg.seq_len, self.cfg.max_images, size, mc.pad_token_id)
    for i, row in enumerate(rows):
      one = {k: v[i:i + 1] for k, v in out.items()}
      self._fill_row(one, row, batch_index)
    self.rows_built += len(rows)
    return out

  # --- the iterator interface ---------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self):
    batch_index = self.index
    self.index += 1
    shapes = {k: v.shape for k, v in self._rows(range(0), 0).items()}
    cache = {}

    def local(name, index):
      rows = index[0]
      key = (rows.start, rows.stop)
      if key not in cache:
        start = rows.start or 0
        stop = self.batch_size if rows.stop is None else rows.stop
        cache[key] = self._rows(range(start, stop), batch_index)
      return cache[key][name][(slice(None),) + tuple(index[1:])]

    out = {}
    for name, shape in shapes.items():
      global_shape = (self.batch_size,) + shape[1:]
      sharding = sharding_lib.batch_sharding(self.mesh, len(global_shape))
      out[name] = jax.make_array_from_callback(global_shape, sharding,
                                               lambda idx, name=name: local(name, idx))
    return out

  def get_state(self) -> dict:
    return {"next_batch": self.index, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    if state.get("seed", self.seed) != self.seed:
      raise ValueError(f"data iterator state is for seed {state['seed']}, this run uses "
                       f"{self.seed}.")
    self.index = int(state["next_batch"])

  def stats(self) -> dict:
    return {"batches": self.index, "rows_built": self.rows_built}


def build_train_iterator(data_cfg, *, processor=None, model_config, global_batch_size, mesh,
                         seed, process_index=None, process_count=None) -> SyntheticIterator:
  """Same signature as `janus_jax.data.pipeline.build_train_iterator`."""
  del processor
  return SyntheticIterator(data_cfg, model_config=model_config,
                           global_batch_size=global_batch_size, mesh=mesh, seed=seed,
                           process_index=process_index, process_count=process_count)
