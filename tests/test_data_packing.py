"""Packing: segment layout, first-fit placement, and a packed row computing exactly what its
examples compute alone (block-diagonal causal attention, positions restarting)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import janus_jax
from janus_jax.data import examples as ex
from janus_jax.data.batch import KIND_T2I, KIND_TEXT, KIND_UNDERSTANDING
from janus_jax.data.packing import BatchPacker, pack_rows
from janus_jax.modules.janus import Janus
from tests import test_data_support as S


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("packing")
  loaded = janus_jax.load(S.tiny_checkpoint(str(root / "ckpt")), dtype="float32")
  return loaded.config, loaded.processor, loaded.params


def _rows(config, p):
  rng = np.random.default_rng(0)
  images = [rng.uniform(-1, 1, (p.image_size, p.image_size, 3)).astype(np.float32)
            for _ in range(2)]
  conversation = [{"role": "user", "content": "<image_placeholder> What colour? <image_placeholder>"},
                  {"role": "assistant", "content": "red"},
                  {"role": "user", "content": "How many shapes?"},
                  {"role": "assistant", "content": "two"}]
  codes = rng.integers(0, config.vq.codebook_size, config.vq.num_tokens)
  return [ex.text_row(p, "The quick brown fox", seq_len=512),
          ex.understanding_row(p, conversation, images, seq_len=512, max_images=2,
                               system_prompt=""),
          ex.t2i_row(p, "a red circle", codes, seq_len=512),
          ex.text_row(p, "a cat on a mat", seq_len=512)]


def test_packed_rows_restart_positions_and_number_segments(setup):
  config, p, _ = setup
  rows = _rows(config, p)
  lengths = [len(r) for r in rows]
  length = lengths[2] + 3
  batch = pack_rows(rows, num_rows=2, length=length, max_images=2, image_size=p.image_size,
                    pad_token_id=p.pad_token_id)
  # First fit: text and understanding share batch row 0; the t2i example no longer fits
  # there and opens row 1; the last text example still fits row 0.
  seg0, seg1 = batch["segment_ids"]
  free = length - lengths[0] - lengths[1] - lengths[3]
  np.testing.assert_array_equal(
      seg0, [1] * lengths[0] + [2] * lengths[1] + [3] * lengths[3] + [0] * free)
  np.testing.assert_array_equal(seg1, [1] * lengths[2] + [0] * 3)
  np.testing.assert_array_equal(batch["positions"][0, :lengths[0] + lengths[1]],
                                np.concatenate([np.arange(lengths[0]), np.arange(lengths[1])]))
  np.testing.assert_array_equal(batch["kind"][0, :sum(lengths[:2])],
                                [KIND_TEXT] * lengths[0] + [KIND_UNDERSTANDING] * lengths[1])
  assert (batch["kind"][1][seg1 == 1] == KIND_T2I).all() and not batch["kind"][1][-3:].any()
  pad = seg0 == 0
  assert (batch["input_ids"][0][pad] == p.pad_token_id).all()
  assert not batch["loss_weights"][0][pad].any() and not batch["positions"][0][pad].any()
  np.testing.assert_array_equal(batch["pixel_values"][0], rows[1].images)
  assert not batch["pixel_values"][1].any()
  for field in ("targets", "loss_weights", "target_head", "gen_codes", "is_gen"):
    np.testing.assert_array_equal(batch[field][1][seg1 == 1], getattr(rows[2], field))


def test_without_packing_each_row_holds_one_example(setup):
  config, p, _ = setup
  rows = _rows(config, p)
  packer = BatchPacker(3, 300, 2, p.image_size, p.pad_token_id, pack=False)
  assert packer.add(rows[0]) and packer.add(rows[1]) and packer.add(rows[3])
  assert not packer.add(rows[0]) and packer.full()
  assert packer.batch["segment_ids"].max(axis=1).tolist() == [1, 1, 1]
  assert (packer.batch["segment_ids"] > 0).sum(axis=1).tolist() == [len(rows[0]), len(rows[1]),
                                                                    len(rows[3])]


def _forward(module, batch):
  pixels = batch["pixel_values"] if batch["pixel_values"].shape[1] else None
  embeds = module.embed(batch["input_ids"], pixels, batch["gen_codes"], batch["is_gen"])
  segments = batch["segment_ids"]
  hidden, _ = module.decode(embeds, batch["positions"], segments > 0, segment_ids=segments)
  return module.text_logits(hidden), module.gen_logits(hidden)


def test_packed_row_logits_equal_each_example_alone(setup):
  config, p, params = setup
  rows = _rows(config, p)
  model = Janus(config)
  run = jax.jit(lambda params, batch: model.apply({"params": params}, batch, method=_forward))
  total = sum(len(r) for r in rows)
  packed = pack_rows(rows, num_rows=1, length=total + 9, max_images=2, image_size=p.image_size,
                     pad_token_id=p.pad_token_id)
  text, gen = run(params, {k: jnp.asarray(v) for k, v in packed.items()})
  start = 0
  for row in rows:
    alone = pack_rows([row], num_rows=1, length=len(row), max_images=len(row.images),
                      image_size=p.image_size, pad_token_id=p.pad_token_id)
    want_text, want_gen = run(params, {k: jnp.asarray(v) for k, v in alone.items()})
    end = start + len(row)
    np.testing.assert_allclose(text[0, start:end], want_text[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gen[0, start:end], want_gen[0], rtol=1e-5, atol=1e-5)
    start = end
  # Not vacuous: the same examples without segment ids see each other and differ.
  unsegmented = dict(packed, segment_ids=np.where(packed["segment_ids"] > 0, 1, 0))
  mixed, _ = run(params, {k: jnp.asarray(v) for k, v in unsegmented.items()})
  assert np.abs(np.asarray(mixed[0, len(rows[0]):total]) - np.asarray(text[0, len(rows[0]):total])
                ).max() > 1e-3
