"""Pretraining the understanding encoder (janus_jax.train_vision): the sigmoid loss, that
training separates pairs, that its encoder drops into a Janus param tree, the CLI, and the
demo's use of it (frozen until Stage III)."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from janus_jax import checkpoint, train_vision
from janus_jax.demo import data as demo_data
from janus_jax.demo import world
from janus_jax.demo.run import model_config

IDS = dict(vocab_size=384, bos_token_id=1, eos_token_id=2, pad_token_id=3, image_token_id=4,
           boi_token_id=5, eoi_token_id=6)


def test_sigmoid_loss_matches_its_definition():
  rng = np.random.default_rng(0)
  image = rng.standard_normal((4, 3)).astype(np.float32)
  text = rng.standard_normal((4, 3)).astype(np.float32)
  same = np.eye(4, dtype=bool)
  same[1, 2] = same[2, 1] = True       # rows 1 and 2 share a text: both are matches
  scale, bias = 3.0, -2.0
  expected = 0.0
  for i in range(4):
    for j in range(4):
      z = (1 if same[i, j] else -1) * (scale * image[i] @ text[j] + bias)
      expected += np.log1p(np.exp(-z))
  got = train_vision.sigmoid_loss(jnp.asarray(image), jnp.asarray(text), scale, bias,
                                  jnp.asarray(same))
  np.testing.assert_allclose(float(got), expected / 4, rtol=1e-5)


def _pairs(n: int, seed: int = 0):
  rng = random.Random(seed)
  scenes = [world.random_scene(rng) for _ in range(n)]
  images = np.stack([world.render(s) for s in scenes]).astype(np.float32) / 127.5 - 1.0
  return images, [world.describe(s) for s in scenes]


@pytest.fixture(scope="module")
def tokenizer():
  texts = _pairs(300, seed=1)[1] + [" ".join(world.SHAPES + tuple(world.COLOURS))]
  return demo_data.byte_level_bpe(texts, 256, demo_data.SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def trained(tokenizer):
  """A short run: enough to check what training returns and writes. That training
  separates held-out pairs is checked on the quick demo's encoder run
  (tests/test_demo.py), which trains long enough to show it."""
  config = model_config(IDS)
  images, texts = _pairs(96)
  ids, mask = train_vision.tokenize(tokenizer, texts, 64)
  tc = train_vision.VisionTrainConfig(steps=12, batch_size=32, held_out=24, log_every=4)
  params, history = train_vision.train(images, ids, mask, config, tc, progress=False)
  return config, params, history


def test_training_logs_loss_and_held_out_retrieval(trained):
  _, _, history = trained
  assert [h["step"] for h in history] == [4, 8, 12]
  for h in history:
    assert np.isfinite(h["loss"]) and 0.0 <= h["retrieval"] <= 1.0, h


def test_encoder_drops_into_a_janus_param_tree(trained, tmp_path):
  config, params, history = trained
  from janus_jax.model import abstract_params
  expected = abstract_params(config)["vision"]
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda a: a.shape, expected)
  out = tmp_path / "vision"
  train_vision.save(str(out), params, config, history)
  stored_config, loaded = checkpoint.load_part(str(out), "vision")
  assert stored_config.vision == config.vision
  jax.tree.map(np.testing.assert_array_equal, loaded["vision"], params)
  assert len((out / "metrics.jsonl").read_text().splitlines()) == len(history)
  with pytest.raises(checkpoint.CheckpointError, match="no part"):
    checkpoint.load_part(str(out), "visoin")


def test_bad_input_is_refused(tokenizer):
  config = model_config(IDS)
  images, texts = _pairs(40)
  ids, mask = train_vision.tokenize(tokenizer, texts, 64)
  tc = train_vision.VisionTrainConfig(steps=1, batch_size=64)
  with pytest.raises(ValueError, match="fewer than one batch"):
    train_vision.train(images, ids, mask, config, tc, progress=False)
  with pytest.raises(ValueError, match="one text per image"):
    train_vision.train(images, ids[:10], mask[:10], config, tc, progress=False)
  with pytest.raises(ValueError, match="expected images"):
    train_vision.train(images[:, :32], ids, mask, config, tc, progress=False)
  with pytest.raises(ValueError, match="empty caption"):
    train_vision.tokenize(tokenizer, ["a circle", ""], 64)


def test_train_vision_cli(tmp_path, tokenizer):
  rng = random.Random(0)
  (tmp_path / "images").mkdir()
  with open(tmp_path / "pairs.jsonl", "w") as f:
    for i in range(24):
      scene = world.random_scene(rng)
      Image.fromarray(world.render(scene)).save(tmp_path / "images" / f"{i}.png")
      f.write(json.dumps({"image": f"images/{i}.png", "caption": world.describe(scene)}) + "\n")
  (tmp_path / "tok").mkdir()
  tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
  config = model_config(dict(IDS, vocab_size=tokenizer.get_vocab_size()))
  config.to_json(str(tmp_path / "config.json"))
  out = tmp_path / "vision"
  cmd = [sys.executable, "-m", "janus_jax.train_vision", "--pairs", str(tmp_path / "pairs.jsonl"),
         "--model-config", str(tmp_path / "config.json"), "--tokenizer", str(tmp_path / "tok"),
         "--out", str(out), "--steps", "3", "--batch-size", "8", "--held-out", "4",
         "--no-progress"]
  done = subprocess.run(cmd, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "trained the understanding encoder" in done.stdout
  loaded = checkpoint.load_part(str(out), "vision")[1]["vision"]
  assert loaded["patch_kernel"].shape == (16, 16, 3, 128)
  # bad input: one error line, nothing left behind
  for i, bad in ((4, str(tmp_path / "missing.jsonl")), (8, str(tmp_path / "images"))):
    args = cmd[:i] + [bad] + cmd[i + 1:]
    args[args.index("--out") + 1] = str(tmp_path / "other")
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error:"), done.stderr
    assert ("does not exist" if i == 4 else "no tokenizer.json") in done.stderr
    assert not (tmp_path / "other").exists()
  done = subprocess.run(cmd, capture_output=True, text=True)
  assert done.returncode == 1 and "--overwrite" in done.stderr


def test_demo_keeps_a_pretrained_encoder_frozen_until_stage_three(tmp_path):
  import dataclasses
  from janus_jax.demo.run import QUICK, Demo
  plans = {steps: dataclasses.replace(QUICK, vision_steps=steps) for steps in (0, 50)}
  for steps, plan in plans.items():
    demo = Demo(str(tmp_path / f"run{steps}"), plan, progress=False, log=lambda line: None)
    for stage in (1, 2, 3):
      trains_vision = "vision/.*" in demo.stage_config(stage, "init", demo.sources()).trainable
      assert trains_vision == (stage == 3 or not steps), (steps, stage)
