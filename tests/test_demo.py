"""`python -m janus_jax.demo --quick` end to end: report, checkpoint, scores above floors that
the untrained model stays below, and the checkpoint works with generate and chat."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from janus_jax.demo import world

# The quick run trains for about a minute: enough to answer in the data set's words (VQA
# well above the untrained model's 0), not enough to draw (its mini-GenEval stays near the
# untrained model's, so it is reported, not asserted; the full run's scores are in the
# README). The floor must be out of the untrained model's reach (checked below).
QUICK_VQA_FLOOR = 0.25


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device, as users run it
  done = subprocess.run([sys.executable, "-m", "janus_jax.demo", "--workdir", str(workdir),
                         "--quick", "--quiet"], capture_output=True, text=True, env=env,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  return workdir, summary, done


def test_quick_demo_report_and_summary_line(quick_demo):
  workdir, summary, done = quick_demo
  last = done.stdout.strip().splitlines()[-1]
  assert last.startswith("demo finished: mini-GenEval") and "report/index.html" in last
  page = (workdir / "report" / "index.html").read_text()
  images = re.findall(r"src='([^']+)'", page)
  assert "losses.png" in images and "vq_reconstructions.png" in images
  assert any(i.startswith("gen_") for i in images) and any(i.startswith("chat_") for i in images)
  for name in images:
    assert (workdir / "report" / name).is_file(), name
  for phase in ("data + tokenizer", "VQ tokenizer", "Stage I", "Stage II", "Stage III"):
    assert any(p["name"] == phase for p in summary["phases"]), phase
  # a stage's loss curve per kind was recorded
  rows = [json.loads(line) for line in open(workdir / "stage2" / "metrics.jsonl")]
  assert len(rows) >= 2 and all(k in rows[-1] for k in ("loss/understanding", "loss/t2i"))
  # progress lines and the per-phase timings went to stderr
  assert "[Stage III] done" in done.stderr
  # each stage ran with the plan's rows per step and step count (not the recipe's defaults)
  from janus_jax.demo.run import QUICK
  for stage in (1, 2, 3):
    with open(workdir / f"stage{stage}" / "train_config.json") as f:
      config = json.load(f)
    assert config["global_batch_size"] == QUICK.batch_size, stage
    assert config["num_steps"] == QUICK.stage_steps[stage - 1], stage


def test_quick_demo_scores_beat_untrained(quick_demo):
  _, summary, _ = quick_demo
  trained, untrained = summary["scores"]["trained"], summary["scores"]["untrained"]
  assert summary["detector_on_ground_truth"] >= 0.99
  assert trained["vqa"] >= QUICK_VQA_FLOOR, summary["headline"]
  assert untrained["vqa"] < QUICK_VQA_FLOOR, summary["headline"]
  assert 0 <= trained["geneval_overall"] <= 1 and set(trained["geneval"]) == set(world.CATEGORIES)


def test_quick_demo_learns_every_kind(quick_demo):
  """Each stage's losses fall: the image-token (t2i) loss of Stage III ends well below
  where Stage I began, and so does the understanding loss."""
  workdir, summary, _ = quick_demo
  first = [json.loads(line) for line in open(workdir / "stage1" / "metrics.jsonl")][0]
  last = [json.loads(line) for line in open(workdir / "stage3" / "metrics.jsonl")][-1]
  for kind in ("t2i", "understanding"):
    assert last[f"loss/{kind}"] < 0.7 * first[f"loss/{kind}"], (kind, first, last)


def test_quick_demo_encoder_separates_held_out_pairs(quick_demo):
  """The understanding encoder's pretraining (janus_jax.train_vision): its sigmoid loss
  falls, and a held-out picture finds its own description among the 256 held out far more
  often than chance (1 in 256, where the first log stands; the quick run reaches ~0.5)."""
  workdir, _, _ = quick_demo
  history = [json.loads(line) for line in open(workdir / "vision" / "metrics.jsonl")]
  assert history[0]["retrieval"] < 0.02, history[0]
  assert history[-1]["loss"] < 0.6 * history[0]["loss"], [h["loss"] for h in history]
  assert history[-1]["retrieval"] > 0.15, [h["retrieval"] for h in history]


def test_demo_checkpoint_works_with_generate_and_chat(quick_demo, tmp_path):
  workdir, summary, _ = quick_demo
  checkpoint = summary["checkpoint"]
  assert os.path.isfile(os.path.join(checkpoint, "tokenizer.json"))
  from janus_jax import chat, generate
  out = tmp_path / "samples"
  assert generate.main(["--checkpoint", checkpoint, "--dtype", "float32", "--prompt",
                        "a red circle", "--num-images", "2", "--out", str(out), "--quiet"]) == 0
  assert (out / "grid.png").is_file()
  image = sorted((workdir / "data" / "images" / "eval").iterdir())[0]
  import contextlib
  import io
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    assert chat.main(["--checkpoint", checkpoint, "--dtype", "float32", "--image", str(image),
                      "--question", "How many shapes are there?", "--max-new-tokens", "4"]) == 0
  assert buffer.getvalue().strip().split()[-1] in ("one", "two", "three"), buffer.getvalue()


def test_demo_rerun_reuses_finished_phases(quick_demo):
  """A second run in the same workdir keeps data, VQ and stages and only re-evaluates."""
  workdir, summary, _ = quick_demo
  from janus_jax.demo.run import QUICK, Demo
  demo = Demo(str(workdir), QUICK, progress=False, log=lambda line: None)
  config = demo.make_data()
  mtime = os.path.getmtime(workdir / "vq" / "config.json")
  vq_dir = demo.train_vq(config)
  assert os.path.getmtime(workdir / "vq" / "config.json") == mtime
  sources = demo.prepare(vq_dir)
  assert sources["t2i"] == [str(workdir / "prepared" / "t2i")]
  export = demo.train_stage(3, summary["checkpoint"], sources)
  assert export == summary["checkpoint"]
  # a run with other settings is refused, not mixed into the finished phases
  done = subprocess.run([sys.executable, "-m", "janus_jax.demo", "--workdir", str(workdir),
                         "--quiet"], capture_output=True, text=True)
  assert done.returncode == 1 and done.stderr.startswith("error:") and "--quick" in done.stderr
