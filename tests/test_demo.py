"""`python -m janus_jax.demo --quick` end to end: report, checkpoint, scores above floors that
the untrained model stays below, and the checkpoint works with generate and chat."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

# Floors for the quick run (a few minutes of training). The full run's targets are in the
# README; these only have to be out of reach of an untrained model (checked below).
QUICK_FLOORS = {"geneval": 0.25, "vqa": 0.45}


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


def test_quick_demo_scores_beat_untrained(quick_demo):
  _, summary, _ = quick_demo
  trained, untrained = summary["scores"]["trained"], summary["scores"]["untrained"]
  assert summary["detector_on_ground_truth"] >= 0.99
  assert summary["vq_agreement"] >= 0.8, summary["vq_detail"]
  assert trained["geneval_overall"] >= QUICK_FLOORS["geneval"], summary["headline"]
  assert trained["vqa"] >= QUICK_FLOORS["vqa"], summary["headline"]
  assert untrained["geneval_overall"] < QUICK_FLOORS["geneval"], summary["headline"]
  assert untrained["vqa"] < QUICK_FLOORS["vqa"], summary["headline"]


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
  demo.train_vq(config)
  assert os.path.getmtime(workdir / "vq" / "config.json") == mtime
  export = demo.train_stage(3, summary["checkpoint"], {})
  assert export == summary["checkpoint"]
