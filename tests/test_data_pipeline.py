"""The pipeline: mixture proportions, per-process shards, global arrays on a mesh, exact
resume, and bad records counted instead of stopping the run."""
import collections
import json
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from janus_jax import sharding
from janus_jax.data import pipeline
from janus_jax.data.batch import KINDS, TOKEN_FIELDS
from tests import test_data_support as S

NAMES = {v: k for k, v in KINDS.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  config = S.tiny_config()
  p = S.tiny_processor(str(root / "tok"), config)
  rng = np.random.default_rng(0)
  n = config.vq.num_tokens
  t2i = [{"caption": f"{S.CAPTIONS[i % 5]} {i}", "id": str(i),
          "codes": rng.integers(0, config.vq.codebook_size, n).astype(np.int32)}
         for i in range(40)]
  t2i[3]["caption"] = " "                                        # empty caption
  t2i[7]["codes"] = np.full(n, config.vq.codebook_size, np.int32)   # out of the codebook
  und = []
  for i in range(24):
    images = [S.png_bytes(rng, int(rng.integers(10, 50)), int(rng.integers(10, 50)))
              for _ in range(i % 3)]
    turns = [{"role": "user", "content": f"{S.QUESTIONS[i % 3]} {i}"},
             {"role": "assistant", "content": S.ANSWERS[i % 3]}]
    und.append({"conversation": json.dumps(turns), "images": images, "id": str(i)})
  und[5]["images"] = [b"not an image at all"]
  und[6]["conversation"] = json.dumps([{"role": "user", "content": "hello?"}])
  text = [{"text": f"document {i}: {S.CAPTIONS[i % 5]}", "id": str(i)} for i in range(37)]
  text[11]["text"] = "document 11: " + "the quick brown fox jumps over the lazy dog " * 120
  extra = [{"text": f"beta {i}: {S.CAPTIONS[i % 5]}", "id": str(i)} for i in range(20)]
  paths = {"t2i": S.write_prepared(str(root / "t2i"), "t2i", t2i, n),
           "understanding": S.write_prepared(str(root / "und"), "understanding", und),
           "text": S.write_prepared(str(root / "text"), "text", text),
           "beta": S.write_prepared(str(root / "beta"), "text", extra)}
  return config, p, paths


def _sources(paths, kinds=("understanding", "text", "t2i")):
  return [{"kind": k, "path": paths[k], "weight": 1.0} for k in kinds]


def _host(data, cfg, rows=4, seed=0, **kw):
  config, p, _ = data
  return pipeline.build_host_dataset(cfg, processor=p, model_config=config,
                                     local_batch_size=rows, seed=seed, **kw)


def test_mixture_proportions_match_the_kind_weights(data):
  _, p, paths = data
  weights = {"understanding": 2, "text": 3, "t2i": 5}
  cfg = S.data_config(_sources(paths), kind_weights=weights)
  counts, from_kinds = collections.Counter(), collections.Counter()
  for batch, _ in zip(iter(_host(data, cfg, rows=8)), range(25)):
    counts.update({k: v for k, v in batch["stats"].items() if k.startswith("examples/")})
    from_kinds.update(NAMES[kind] for kind, _ in S.segments(batch, p))
  total = sum(counts.values())
  assert total > 300
  assert from_kinds == {k.split("/")[1]: v for k, v in counts.items()}
  for kind, weight in weights.items():
    share, want = counts[f"examples/{kind}"] / total, weight / 10
    assert abs(share - want) < 3 * np.sqrt(want * (1 - want) / total), (kind, share)


def test_sources_of_one_kind_share_its_weight_and_weight_zero_kinds_are_not_read(data):
  _, p, paths = data
  cfg = S.data_config([{"kind": "text", "path": paths["text"], "weight": 1.0},
                       {"kind": "text", "path": paths["beta"], "weight": 3.0},
                       {"kind": "t2i", "path": paths["t2i"], "weight": 1.0}],
                      kind_weights={"text": 1, "t2i": 0})
  seen = collections.Counter()
  for batch, _ in zip(iter(_host(data, cfg, rows=4)), range(20)):
    for kind, text in S.segments(batch, p):
      assert NAMES[kind] == "text"
      seen["beta" if text.startswith("beta") else "alpha"] += 1
  total = sum(seen.values())
  assert abs(seen["beta"] / total - 0.75) < 3 * np.sqrt(0.75 * 0.25 / total)


@pytest.mark.parametrize("pack", [True, False])
def test_process_shards_are_disjoint_and_cover_the_data(data, pack):
  _, p, paths = data
  cfg = S.data_config(_sources(paths, ["text"]), num_epochs=1, pack=pack, seq_len=128)
  seen = []
  for index in range(3):
    docs = []
    for batch in _host(data, cfg, rows=4, process_index=index, process_count=3):
      docs += [int(re.match(r"document (\d+):", text).group(1))
               for _, text in S.segments(batch, p)]
    seen.append(docs)
  assert all(len(d) == len(set(d)) for d in seen)              # one epoch: each once
  assert not (set(seen[0]) & set(seen[1]) or set(seen[0]) & set(seen[2])
              or set(seen[1]) & set(seen[2]))
  assert set().union(*map(set, seen)) == set(range(37))
  assert [sorted(d) for d in seen] == [list(range(i, 37, 3)) for i in range(3)]


def _train_iterator(data, mesh, **overrides):
  config, p, paths = data
  options = {"kind_weights": {"understanding": 2, "text": 3, "t2i": 5}, "prefetch_batches": 2,
             **overrides}
  cfg = S.data_config(_sources(paths), **options)
  return pipeline.build_train_iterator(cfg, processor=p, model_config=config,
                                       global_batch_size=8, mesh=mesh, seed=5)


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() >= 8, "tests/conftest.py sets 8 simulated CPU devices; run via pytest"
  return sharding.make_mesh(data=2, fsdp=2, tensor=2)


def test_global_batches_are_sharded_over_data_and_fsdp(data, mesh):
  config, p, _ = data
  it = _train_iterator(data, mesh)
  batch = next(it)
  assert set(batch) == set(TOKEN_FIELDS) | {"pixel_values"}
  for name, array in batch.items():
    assert isinstance(array, jax.Array) and array.shape[0] == 8
    assert array.sharding.spec == PartitionSpec(("data", "fsdp"), *[None] * (array.ndim - 1))
    assert array.dtype == (TOKEN_FIELDS.get(name) or np.float32)
  assert batch["input_ids"].shape == (8, 512)
  assert batch["pixel_values"].shape == (8, 4, p.image_size, p.image_size, 3)
  assert len(batch["input_ids"].addressable_shards) == 8
  it.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_continues_bit_identically(data, mesh, workers):
  it = _train_iterator(data, mesh, num_workers=workers)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))                # as saved with a checkpoint
  want = [jax.device_get(next(it)) for _ in range(4)]
  want_stats = it.stats()
  it.close()
  restored = _train_iterator(data, mesh, num_workers=workers)
  restored.set_state(state)
  got = [jax.device_get(next(restored)) for _ in range(4)]
  for a, b in zip(want, got):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert restored.stats() == want_stats
  restored.close()
  if workers:
    return
  fresh = _train_iterator(data, mesh)
  first = jax.device_get(next(fresh))
  assert not np.array_equal(first["input_ids"], want[0]["input_ids"])
  fresh.close()


def test_state_of_another_configuration_is_refused(data, mesh):
  state = _train_iterator(data, mesh).get_state()
  other = _train_iterator(data, mesh, seq_len=256)
  with pytest.raises(ValueError, match="another data configuration"):
    other.set_state(state)


def test_bad_records_are_counted_and_the_run_goes_on(data, mesh):
  it = _train_iterator(data, mesh, kind_weights={})
  for _ in range(12):
    next(it)
  stats = it.stats()
  for reason in ("skipped/empty_caption", "skipped/bad_codes", "skipped/unreadable_image",
                 "skipped/no_assistant_turn", "truncated/text_too_long"):
    assert stats.get(reason, 0) >= 1, (reason, stats)
  assert stats["batches"] == 12


def test_the_trainer_recipe_form_of_the_options_is_accepted(data):
  import ml_collections
  _, p, paths = data
  cfg = ml_collections.ConfigDict(dict(
      source="mixture", seq_len=512, max_images=4, packing=True, cfg_dropout=0.1,
      ratios=dict(understanding=1, text=0, t2i=3), tokenizer_dir="",
      sources=dict(understanding=[paths["understanding"]], text=[],
                   t2i=[{"path": paths["t2i"], "weight": 1.0}])))
  kinds = collections.Counter()
  for batch, _ in zip(iter(_host(data, cfg, rows=4)), range(6)):
    kinds.update(NAMES[kind] for kind, _ in S.segments(batch, p))
  assert set(kinds) == {"understanding", "t2i"} and kinds["t2i"] > 2 * kinds["understanding"]
  cfg.pack = False
  with pytest.raises(ValueError, match="'packing' and 'pack'"):
    _host(data, cfg)
  cfg = S.data_config(_sources(paths), shuffle_buffer=3)
  with pytest.raises(ValueError, match="unknown data options"):
    _host(data, cfg)


def test_tfds_sources_by_name_with_a_split_and_renamed_fields(data):
  _, p, paths = data
  cfg = S.data_config([{"kind": "text", "tfds": "janus_text", "data_dir": paths["text"],
                        "split": "train[:10]", "fields": {"text": "id"}}],
                      num_epochs=1, shuffle=False, pack=False, seq_len=16)
  texts = [text for batch in _host(data, cfg, rows=5) for _, text in S.segments(batch, p)]
  assert texts == [str(i) for i in range(10)]
