"""Ahead-of-time compilation for a TPU slice on this CPU host (needs libtpu in its own venv).

.ci/run builds that venv and points JANUS_TPU_PYTHON at its interpreter; the test is
skipped only when that variable is unset (CI fails on any skipped test).
"""
import json
import os
import subprocess

import pytest

TPU_PYTHON = os.environ.get("JANUS_TPU_PYTHON")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not TPU_PYTHON, reason="JANUS_TPU_PYTHON (a venv with libtpu) not set")


def _aot(*args, tmp_path):
  out = tmp_path / "report.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
         "TPU_ACCELERATOR_TYPE": "v5p-8", "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([TPU_PYTHON, "-m", "janus_jax.aot", *args, "--json", str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_sampling_program_compiles_for_a_v5p_slice_and_reports_memory(tmp_path):
  report, stdout = _aot("--sample", "tiny", "--batch", "4", "--topology", "v5p-8",
                        tmp_path=tmp_path)
  assert report["fits"] and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert 0 < report["total_bytes"] < report["hbm_bytes"]
  assert report["argument_bytes"] > 0 and report["flops"] > 0 and report["model_flops"] > 0
  assert "per chip" in stdout


def test_train_step_of_a_stage_config_compiles_for_a_v5p_slice(tmp_path):
  report, stdout = _aot("--config", "experiments/stage2.py:tiny", "--topology", "v5p-8",
                        tmp_path=tmp_path)
  assert report["fits"] and report["total_bytes"] > 0 and report["flops"] > 0
  assert report["model_flops"] > 0 and report["projected_step_s"] > 0
  assert "train step" in stdout
