"""`python -m janus_jax.data.prepare`: raw folders/JSON -> a TFDS ArrayRecord dataset that
tfds.data_source and grain read back; pre-tokenised codes equal `encode_images`; corrupt
inputs are counted, not fatal; an interrupted run resumes."""
import json
import os

import grain
import numpy as np
import pytest

import janus_jax
from janus_jax.data import pipeline, prepare
from janus_jax.data.writer import PrepareError
from janus_jax.modules.janus import Janus
from janus_jax.processor import preprocess_generation_image, preprocess_image
from tests import test_data_support as S


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp("prepare_ckpt")
  return S.tiny_checkpoint(str(root / "ckpt"))


def _with_bad_inputs(jsonl: str) -> str:
  directory = os.path.dirname(jsonl)
  with open(os.path.join(directory, "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is no JPEG")
  with open(jsonl, "a") as f:
    f.write(json.dumps({"image": "gone.png", "caption": "a missing image"}) + "\n")
    f.write(json.dumps({"image": "broken.jpg", "caption": "a corrupt image"}) + "\n")
    f.write(json.dumps({"image": "img0.jpg", "caption": "   "}) + "\n")
    f.write('{"image": "img1.png", "caption": \n')
  return jsonl


def test_pretokenised_codes_read_back_through_tfds_and_grain_equal_encode_images(
    checkpoint, tmp_path):
  import tensorflow_datasets as tfds
  inputs = _with_bad_inputs(S.write_t2i_inputs(str(tmp_path / "raw"), 12))
  out = str(tmp_path / "t2i")
  summary = prepare.prepare("t2i", os.path.dirname(inputs), out, vq_checkpoint=checkpoint,
                            shard_size=5, batch_size=4, progress=False)
  assert summary["written"] == 12 and summary["inputs"] == 16
  assert summary["skipped"] == {"bad_json": 1, "empty_caption": 1, "missing_image": 1,
                                "unreadable_image": 1}
  source = tfds.data_source("janus_t2i", data_dir=out, split="train")
  records = sorted(grain.MapDataset.source(source), key=lambda r: int(r["id"]))
  assert len(source) == 12 and [int(r["id"]) for r in records] == list(range(12))
  loaded = janus_jax.load(checkpoint, dtype="float32")
  size = loaded.config.vq.image_size
  pixels = np.stack([preprocess_generation_image(str(tmp_path / "raw" / name), size)
                     for name in (f"img{i}.{'png' if i % 2 else 'jpg'}" for i in range(12))])
  want = np.asarray(loaded.model.apply({"params": loaded.params}, pixels,
                                       method=Janus.encode_images))
  got = np.stack([r["codes"] for r in records])
  assert got.dtype == np.int32 and got.shape == (12, loaded.config.vq.num_tokens)
  np.testing.assert_array_equal(got, want)
  assert records[4]["caption"].decode() == f"{S.CAPTIONS[4]} number 4"
  with open(os.path.join(out, "janus_prepare.json")) as f:
    assert json.load(f)["vq"]["num_tokens"] == loaded.config.vq.num_tokens


def test_captions_sharing_an_image_read_and_encode_it_once(checkpoint, tmp_path, monkeypatch):
  inputs = S.write_t2i_inputs(str(tmp_path / "raw"), 5)
  with open(inputs) as f:
    items = [json.loads(line) for line in f]
  # Each image captioned three times, the repeats far apart (across shards too), and a
  # missing image twice: both of its captions are counted as skipped.
  shared = [dict(item, caption=f"{item['caption']} take {k}") for k in range(3) for item in items]
  shared += [{"image": "gone.png", "caption": "missing"}] * 2
  S.write_jsonl(inputs, shared)
  reads = []
  real = prepare.preprocess_generation_image
  monkeypatch.setattr(prepare, "preprocess_generation_image",
                      lambda path, size: reads.append(path) or real(path, size))
  out = str(tmp_path / "t2i")
  summary = prepare.prepare("t2i", inputs, out, vq_checkpoint=checkpoint, shard_size=4,
                            batch_size=4, progress=False)
  assert summary["written"] == 15 and summary["skipped"] == {"missing_image": 2}
  assert sorted(map(os.path.basename, reads)) == sorted(item["image"] for item in items)
  import tensorflow_datasets as tfds
  records = sorted(grain.MapDataset.source(tfds.data_source("janus_t2i", data_dir=out,
                                                            split="train")),
                   key=lambda r: int(r["id"]))
  loaded = janus_jax.load(checkpoint, dtype="float32")
  pixels = np.stack([real(str(tmp_path / "raw" / item["image"]), loaded.config.vq.image_size)
                     for item in items])
  want = np.asarray(loaded.model.apply({"params": loaded.params}, pixels,
                                       method=Janus.encode_images))
  np.testing.assert_array_equal(np.stack([r["codes"] for r in records]), np.tile(want, (3, 1)))


@pytest.mark.parametrize("image_size", [None, 32])
def test_understanding_images_are_preprocessed_on_read_as_at_inference(tmp_path, image_size):
  config = S.tiny_config()
  p = S.tiny_processor(str(tmp_path / "tok"), config)
  path = S.write_understanding_inputs(str(tmp_path / "raw"), 6)
  with open(path) as f:
    items = json.load(f)
  items += [{"image": ["nowhere.png"], "conversations": [
                {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]},
            {"image": [], "conversations": [{"from": "human", "value": "no answer"}]},
            {"image": ["u1_0.png"], "conversations": [
                {"from": "human", "value": "<image> <image> two tags"},
                {"from": "gpt", "value": "one image"}]}]
  with open(path, "w") as f:
    json.dump(items, f)
  out = str(tmp_path / "und")
  summary = prepare.prepare("understanding", path, out, image_size=image_size, progress=False)
  assert summary["written"] == 6
  assert summary["skipped"] == {"image_count_mismatch": 1, "missing_image": 1,
                                "no_assistant_turn": 1}
  cfg = S.data_config([{"kind": "understanding", "path": out, "weight": 1.0}], shuffle=False,
                      pack=False, num_epochs=1)
  batches = list(pipeline.build_host_dataset(cfg, processor=p, model_config=config,
                                             local_batch_size=6, seed=0))
  assert len(batches) == 1
  batch = batches[0]
  order = {}   # prepared records keep the input order: row i is conversation i
  for i, item in enumerate(items[:6]):
    order[i] = [preprocess_image(str(tmp_path / "raw" / name), p.image_size)
                for name in item["image"]]
    n = len(order[i])
    np.testing.assert_array_equal(batch["pixel_values"][i, :n], np.stack(order[i]) if n else
                                  np.zeros((0, p.image_size, p.image_size, 3)))
    assert not batch["pixel_values"][i, n:].any()
    answer = p.decode(batch["targets"][i][batch["loss_weights"][i] > 0])
    assert answer.split() == [t["value"] for t in item["conversations"] if t["from"] == "gpt"]


def _records(out):
  import tensorflow_datasets as tfds
  source = tfds.builder_from_directory(os.path.join(out, "janus_text", "1.0.0")
                                       ).as_data_source(split="train")
  return [source[i] for i in range(len(source))]


def test_an_interrupted_preparation_resumes_where_it_stopped(tmp_path):
  path = S.write_text_inputs(str(tmp_path / "raw"), 37)
  with open(path, "a") as f:
    f.write(json.dumps({"text": ""}) + "\n")
  out = str(tmp_path / "out")
  assert prepare.prepare("text", path, out, shard_size=10, max_chunks=2, progress=False) is None
  assert len([n for n in os.listdir(os.path.join(out, ".staging")) if n.endswith(".json")]) == 3
  with pytest.raises(ValueError, match="unfinished preparation"):   # and not half-read
    pipeline.build_host_dataset(S.data_config([{"kind": "text", "path": out}]),
                                processor=None, model_config=None, local_batch_size=1, seed=0)
  with pytest.raises(PrepareError, match="shard_size"):
    prepare.prepare("text", path, out, shard_size=7, progress=False)
  summary = prepare.prepare("text", path, out, shard_size=10, progress=False)
  assert summary["resumed_chunks"] == 2 and summary["written"] == 37
  assert summary["skipped"] == {"empty_text": 1} and not os.path.exists(out + "/.staging")
  fresh = prepare.prepare("text", path, str(tmp_path / "fresh"), shard_size=10, progress=False)
  assert fresh["written"] == 37
  assert _records(out) == _records(str(tmp_path / "fresh"))


def test_the_command_line_prints_a_summary_and_one_line_errors(tmp_path, capsys):
  path = S.write_text_inputs(str(tmp_path / "raw"), 5)
  out = str(tmp_path / "out")
  assert prepare.main(["text", "--input", path, "--output", out, "--no-progress"]) == 0
  assert "prepared 5 text examples of 5 inputs" in capsys.readouterr().out
  assert prepare.main(["text", "--input", path, "--output", out, "--no-progress"]) == 1
  assert "already holds a prepared dataset" in capsys.readouterr().err
  assert prepare.main(["text", "--input", str(tmp_path / "nope.jsonl"), "--output",
                       str(tmp_path / "o2"), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "does not exist" in err and len(err.splitlines()) == 1


def test_raw_t2i_images_encoded_while_reading_equal_the_pretokenised_codes(checkpoint,
                                                                            tmp_path):
  config = S.tiny_config()
  p = S.tiny_processor(str(tmp_path / "tok"), config)
  inputs = S.write_t2i_inputs(str(tmp_path / "raw"), 6)
  rows = {}
  for name, vq in (("codes", checkpoint), ("images", None)):
    out = str(tmp_path / name)
    prepare.prepare("t2i", inputs, out, vq_checkpoint=vq, progress=False)
    cfg = S.data_config([{"kind": "t2i", "path": out}], shuffle=False, pack=False,
                        num_epochs=1, uncond_prob=0.0)
    if vq is None:
      with pytest.raises(ValueError, match="hold images, not VQ codes"):
        pipeline.build_host_dataset(cfg, processor=p, model_config=config,
                                    local_batch_size=6, seed=0)
      cfg.vq_checkpoint = checkpoint
    (batch,) = pipeline.build_host_dataset(cfg, processor=p, model_config=config,
                                           local_batch_size=6, seed=0)
    assert batch["stats"] == {"examples/t2i": 6}
    rows[name] = batch
  for field in ("gen_codes", "targets", "input_ids", "loss_weights"):
    np.testing.assert_array_equal(rows["codes"][field], rows["images"][field])
  assert rows["codes"]["is_gen"].sum() == 6 * config.vq.num_tokens
