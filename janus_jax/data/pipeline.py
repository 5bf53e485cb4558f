"""The training input pipeline: sources -> rows -> mixture -> packed batches -> global arrays.

Per JAX process, with grain:

  every source    MapDataset over its records (tfds.data_source: random access)
                  -> this process's shard: records process_index, +process_count, ...
                  -> shuffled (a new order every epoch) -> repeated
                  -> random_map: record -> Row of its kind (or a Skipped marker)
  mixture         MapDataset.mix with the sources' weights (per example), deterministic
  host batches    examples read by `read_threads` threads, packed first-fit into
                  [global_batch / process_count, seq_len] rows (packing.py), prefetched
                  (in `num_workers` processes when > 0)
  DataIterator    each host batch becomes one global jax.Array per field, its batch axis
                  sharded over the mesh's ('data', 'fsdp') axes

Everything random is seeded from `seed` (and the process index), so a run is
reproducible, and the iterator state (`get_state`, JSON) restores it exactly.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
from typing import Any, Mapping

import grain
import jax
import numpy as np

from janus_jax.config import JanusConfig
from janus_jax.data import examples as ex
from janus_jax.data.batch import KINDS
from janus_jax.data.packing import STATS_KEY, PackedBatchIterDataset
from janus_jax.data.sources import Source, decode_record, open_image, open_source
from janus_jax.processor import (DEFAULT_SYSTEM_PROMPT, preprocess_generation_image,
                                 preprocess_image)
from janus_jax.sharding import batch_sharding

log = logging.getLogger("janus_jax.data")
STATE_VERSION = 1


def default_data_config():
  """Every data option with its default (an ml_collections.ConfigDict).

  sources           [{"kind": "understanding"|"text"|"t2i", "weight": float,
                      "path": a prepared dataset | "tfds": name, "split", "data_dir",
                      "fields": {canonical field: record field}, "name"}]
                    or {kind: [path | source dict without "kind", ...]}
  kind_weights      {} or e.g. {"understanding": 2, "text": 3, "t2i": 5} (Janus-Pro stage II):
                    a kind's weight is shared by its sources in proportion to theirs; a
                    kind of weight 0 is not read. Empty: the source weights are used as is.
                    Weights count examples, not tokens.
  seq_len           tokens per row
  pack              pack several examples per row (else one example per padded row)
  uncond_prob       probability that a t2i caption is replaced by the unconditional prompt
  max_images_per_row  understanding images a row holds (pixel_values [B, N, S, S, 3])
  system_prompt     the understanding template's system prompt (as at inference)
  shuffle           shuffle each source (per epoch); num_epochs: None = forever
  read_threads      threads decoding and tokenising examples; num_workers: grain worker
                    processes (0: none); prefetch_batches: host batches made ahead
  vq_checkpoint     only for t2i sources of raw images: encode them on the host with this
                    checkpoint's VQ (slow; pre-tokenise with `prepare --vq-checkpoint`)
  log_every         log the skipped/truncated counters every this many batches

  Also accepted: ratios (= kind_weights), packing (= pack), cfg_dropout (= uncond_prob),
  max_images (= max_images_per_row); `source` and `tokenizer_dir` are the trainer's and
  ignored.
  """
  import ml_collections
  from ml_collections import config_dict
  cfg = ml_collections.ConfigDict()
  cfg.sources = []
  cfg.kind_weights = {}
  cfg.seq_len = 4096
  cfg.pack = True
  cfg.uncond_prob = 0.1
  cfg.max_images_per_row = 4
  cfg.system_prompt = DEFAULT_SYSTEM_PROMPT
  cfg.shuffle = True
  cfg.num_epochs = config_dict.placeholder(int)
  cfg.read_threads = 8
  cfg.num_workers = 0
  cfg.prefetch_batches = 2
  cfg.vq_checkpoint = config_dict.placeholder(str)
  cfg.log_every = 1000
  return cfg


# Other names for options (the trainer's recipe configs use them), and keys that belong to
# the trainer and are ignored here.
ALIASES = {"ratios": "kind_weights", "packing": "pack", "cfg_dropout": "uncond_prob",
           "max_images": "max_images_per_row"}
IGNORED = {"source", "tokenizer_dir"}


def _sources_list(sources) -> list[dict]:
  """A list of source dicts, or {kind: [path | source dict, ...]} -> a list of source dicts."""
  if isinstance(sources, Mapping):
    out = []
    for kind, entries in sources.items():
      for entry in ([entries] if isinstance(entries, (str, Mapping)) else entries):
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        out.append({"kind": kind, **entry})
    return out
  return [dict(s) for s in sources]


def _options(data_cfg) -> dict:
  defaults = default_data_config().to_dict()
  given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  given = {k: v for k, v in given.items() if k not in IGNORED}
  for alias, name in ALIASES.items():
    if alias in given:
      value = given.pop(alias)
      if name in given and given[name] != value:
        raise ValueError(f"data options {alias!r} and {name!r} are the same; give one.")
      given[name] = value
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"unknown data options {unknown}; known: {sorted(defaults)}.")
  opts = {**defaults, **given}
  opts["sources"] = _sources_list(opts["sources"])
  opts["kind_weights"] = dict(opts["kind_weights"] or {})
  if not opts["sources"]:
    raise ValueError("data.sources is empty; give at least one source.")
  if not 0.0 <= opts["uncond_prob"] <= 1.0:
    raise ValueError(f"uncond_prob={opts['uncond_prob']} is not a probability.")
  return opts


def _seed(*parts: int) -> int:
  """A 32-bit seed derived from integers (grain seeds must be < 2**32)."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# --- records -> rows ---------------------------------------------------------------------------
_ENCODERS: dict[str, Any] = {}


def _code_encoder(path: str):
  # One per process (worker processes build their own; jitted programs do not pickle).
  if path not in _ENCODERS:
    from janus_jax.data.vq_codes import CodeEncoder
    _ENCODERS[path] = CodeEncoder.from_checkpoint(path, batch_size=1,
                                                  devices=jax.local_devices()[:1])
  return _ENCODERS[path]


class ExampleTransform(grain.transforms.RandomMap):
  """A source record -> `Row` of its kind, or `Skipped(reason)` (never raises)."""

  def __init__(self, kind: str, fields: Mapping[str, str], processor, model_config: JanusConfig,
               opts: Mapping[str, Any]):
    self.kind, self.fields, self.processor = kind, dict(fields), processor
    self.seq_len, self.max_images = opts["seq_len"], opts["max_images_per_row"]
    self.uncond_prob, self.system_prompt = opts["uncond_prob"], opts["system_prompt"]
    self.vq_checkpoint = opts["vq_checkpoint"]
    self.num_codes, self.codebook = model_config.vq.num_tokens, model_config.vq.codebook_size
    self.gen_image_size = model_config.vq.image_size
    self._errors = 0

  def random_map(self, record, rng: np.random.Generator):
    try:
      return self.row(decode_record(self.kind, record, self.fields), rng)
    except ex.Skip as e:
      return ex.Skipped(e.reason)
    except Exception as e:  # noqa: BLE001 - bad data must not stop a run
      self._errors += 1
      if self._errors <= 10:
        log.warning("skipping a %s example: %s: %s", self.kind, type(e).__name__, e)
      return ex.Skipped(f"error_{type(e).__name__}")

  def row(self, example: dict, rng: np.random.Generator) -> ex.Row:
    """A canonical example (sources.decode_record) -> Row; raises Skip."""
    p = self.processor
    if self.kind == "text":
      return ex.text_row(p, example["text"], seq_len=self.seq_len)
    if self.kind == "understanding":
      if len(example["images"]) > self.max_images:
        raise ex.Skip("too_many_images")
      images = [preprocess_image(open_image(im), p.image_size) for im in example["images"]]
      return ex.understanding_row(p, example["conversation"], images, seq_len=self.seq_len,
                                  max_images=self.max_images, system_prompt=self.system_prompt)
    uncond = bool(rng.random() < self.uncond_prob)   # drawn first: same stream for all
    caption = example["caption"]
    if isinstance(caption, list):
      caption = [c for c in caption if c and c.strip()]
      if not caption:
        raise ex.Skip("empty_caption")
      caption = caption[int(rng.integers(len(caption)))]
    codes = example["codes"]
    if codes is None:
      if not self.vq_checkpoint:
        raise ValueError("a t2i source holds raw images; set data.vq_checkpoint or "
                         "pre-tokenise it with `prepare t2i --vq-checkpoint`.")
      if not isinstance(caption, str) or not caption.strip():
        raise ex.Skip("empty_caption")   # before paying for the image
      pixels = preprocess_generation_image(open_image(example["image"]), self.gen_image_size)
      codes = _code_encoder(self.vq_checkpoint)(pixels[None])[0]
    codes = np.asarray(codes).reshape(-1)
    if len(codes) != self.num_codes or codes.min() < 0 or codes.max() >= self.codebook:
      raise ex.Skip("bad_codes", f"{len(codes)} codes; the model takes {self.num_codes} "
                    f"in [0, {self.codebook})")
    return ex.t2i_row(p, caption, codes, seq_len=self.seq_len, uncond=uncond)


# --- the grain pipeline -------------------------------------------------------------------------
def _weighted(sources: list[Source], kind_weights: Mapping[str, float]) -> list[Source]:
  if not kind_weights:
    return sources
  unknown = sorted(set(kind_weights) - set(KINDS))
  if unknown:
    raise ValueError(f"kind_weights has unknown kinds {unknown}; known: {sorted(KINDS)}.")
  out = []
  for kind, weight in kind_weights.items():
    members = [s for s in sources if s.kind == kind]
    if weight > 0 and not members:
      raise ValueError(f"kind_weights gives {kind} weight {weight} but no source is {kind}.")
    total = sum(s.weight for s in members)
    for s in members:
      if weight > 0:
        s.weight = weight * s.weight / total
        out.append(s)
  missing = [s.name for s in sources if s.kind not in kind_weights]
  if missing:
    raise ValueError(f"sources {missing} have a kind without a kind_weights entry.")
  return out


def source_dataset(source: Source, index: int, *, seed: int, process_index: int,
                   process_count: int, shuffle: bool = True,
                   num_epochs: int | None = None) -> grain.MapDataset:
  """This process's records of one source: a disjoint shard, shuffled, repeated."""
  ds = grain.MapDataset.source(source.data)
  ds = ds[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"source {source.name} has {len(source.data)} records, fewer than the "
                     f"{process_count} processes reading it.")
  if shuffle:
    ds = ds.shuffle(seed=_seed(seed, index, 1))
  return ds.repeat(num_epochs)


def build_host_dataset(data_cfg, *, processor, model_config: JanusConfig, local_batch_size: int,
                       seed: int, process_index: int = 0, process_count: int = 1):
  """The host side: a grain IterDataset of numpy batches [local_batch_size, seq_len] (the
  batch.py fields) plus `packing.STATS_KEY`, the counters of the examples they consumed."""
  opts = _options(data_cfg)
  sources = [open_source(s, i) for i, s in enumerate(opts["sources"])]
  sources = _weighted(sources, opts["kind_weights"])
  raw = [s.name for s in sources if s.kind == "t2i" and not s.has_codes]
  if raw and not opts["vq_checkpoint"]:
    raise ValueError(f"t2i sources {raw} hold images, not VQ codes; pre-tokenise them with "
                     "`python -m janus_jax.data.prepare t2i --vq-checkpoint CKPT` or set "
                     "data.vq_checkpoint to encode them while training (slow).")
  datasets = []
  for i, source in enumerate(sources):
    ds = source_dataset(source, i, seed=seed, process_index=process_index,
                        process_count=process_count, shuffle=opts["shuffle"],
                        num_epochs=opts["num_epochs"])
    transform = ExampleTransform(source.kind, source.fields, processor, model_config, opts)
    datasets.append(ds.random_map(transform, seed=_seed(seed, i, 2, process_index)))
  mixed = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(
      datasets, [s.weight for s in sources])
  read = grain.ReadOptions(num_threads=max(1, opts["read_threads"]),
                           prefetch_buffer_size=max(1, 2 * opts["read_threads"]))
  host = PackedBatchIterDataset(
      mixed.to_iter_dataset(read), rows=local_batch_size, length=opts["seq_len"],
      max_images=opts["max_images_per_row"], image_size=processor.image_size,
      pad_token_id=processor.pad_token_id, pack=opts["pack"])
  if opts["num_workers"] > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():   # grain's worker set-up reads its absl flags
      flags.FLAGS.mark_as_parsed()
    return host.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=opts["num_workers"], per_worker_buffer_size=max(1, opts["prefetch_batches"])))
  if opts["prefetch_batches"] > 0:
    return grain.experimental.ThreadPrefetchIterDataset(
        host, prefetch_buffer_size=opts["prefetch_batches"])
  return host


def _fingerprint(opts: Mapping, **extra) -> str:
  keep = {k: v for k, v in opts.items()
          if k not in ("read_threads", "prefetch_batches", "log_every")}
  text = json.dumps({**keep, **extra}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class DataIterator:
  """Global training batches: dicts of jax.Arrays (batch.py fields) [B, ...], B the global
  batch, sharded over ('data', 'fsdp'); each process contributes its own rows.

  `get_state()` (JSON-serialisable) / `set_state(state)` resume exactly; `stats()` counts
  examples per kind, skipped examples and truncated ones per reason.
  """

  def __init__(self, dataset, mesh, *, fingerprint: str, log_every: int = 1000):
    self._dataset, self._mesh = dataset, mesh
    self._iterator = iter(dataset)
    self._fingerprint, self._log_every = fingerprint, log_every
    self._counts: collections.Counter = collections.Counter()
    self._batches = 0

  def __iter__(self):
    return self

  def next_host_batch(self) -> dict[str, np.ndarray]:
    """This process's rows as numpy arrays (the counters are taken in)."""
    batch = dict(next(self._iterator))
    new = batch.pop(STATS_KEY)
    fresh = [k for k in new if k.startswith(("skipped/", "truncated/")) and k not in self._counts]
    self._counts.update(new)
    self._batches += 1
    if fresh or (self._log_every and self._batches % self._log_every == 0):
      log.info("data after %d batches: %s", self._batches, json.dumps(self.stats()))
    return batch

  def __next__(self) -> dict[str, jax.Array]:
    batch = self.next_host_batch()
    processes = jax.process_count()
    return {k: jax.make_array_from_process_local_data(
        batch_sharding(self._mesh, v.ndim), v, (v.shape[0] * processes,) + v.shape[1:])
            for k, v in batch.items()}

  def stats(self) -> dict[str, int]:
    """Counters since the start of the run: batches, examples/<kind>,
    skipped/<reason>, truncated/<reason>."""
    return {"batches": self._batches, **dict(sorted(self._counts.items()))}

  def get_state(self) -> dict:
    return {"version": STATE_VERSION, "fingerprint": self._fingerprint,
            "iterator": self._iterator.get_state(), "batches": self._batches,
            "counts": dict(self._counts)}

  def set_state(self, state: Mapping) -> None:
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')} is not "
                       f"{STATE_VERSION}; it was saved by another version of janus_jax.")
    if state.get("fingerprint") != self._fingerprint:
      raise ValueError("the saved data iterator state belongs to another data configuration "
                       "(sources, seq_len, batch size, seed or process count changed); "
                       "restore with the original configuration or start the data afresh.")
    self._iterator.set_state(state["iterator"])
    self._batches = int(state["batches"])
    self._counts = collections.Counter({k: int(v) for k, v in state["counts"].items()})

  def close(self) -> None:
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


def build_train_iterator(data_cfg, *, processor, model_config: JanusConfig,
                         global_batch_size: int, mesh, seed: int,
                         process_index: int | None = None,
                         process_count: int | None = None) -> DataIterator:
  """The training data: see the module docstring and `default_data_config`.

  global_batch_size rows per step, split evenly over the processes; process_index /
  process_count default to jax's (override them to read another process's shard, e.g. in
  tests: the arrays then hold this process's rows as every process's contribution).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if global_batch_size % count:
    raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of the "
                     f"{count} processes.")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  local = global_batch_size // count
  if (local * jax.process_count()) % shards:
    raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of the "
                     f"{shards} batch shards (mesh data x fsdp).")
  opts = _options(data_cfg)
  dataset = build_host_dataset(opts, processor=processor, model_config=model_config,
                               local_batch_size=local, seed=seed, process_index=index,
                               process_count=count)
  fingerprint = _fingerprint(opts, seed=seed, rows=local, process=(index, count),
                             num_codes=model_config.vq.num_tokens)
  return DataIterator(dataset, mesh, fingerprint=fingerprint, log_every=opts["log_every"])
