"""The train loop as users run it: `python -m janus_jax.train` in subprocesses.

Resuming after `kill -9` or SIGTERM must give bit-identical params and the same data
order as an uninterrupted run; two processes joined by jax.distributed must reach the
losses of one process; a non-finite loss must stop the run and keep the last good
checkpoint. Subprocesses see 2 CPU devices each and share a persistent compilation cache,
so only the first run pays for compiling.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from janus_jax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

# A stage-2 tiny config tuned for fast CPU tests (see tests/test_train_step.py for why eps).
CONFIG_FILE = '''
import sys
sys.path.insert(0, {experiments!r})
import stage2


def get_config(arg="tiny"):
  c = stage2.get_config("tiny")
  c.num_steps = {steps}
  c.log_every = 1
  c.checkpoint.every = 3
  c.checkpoint.keep = 2
  c.optimizer.eps = 1e-6
  c.export = True
  c.tensorboard = False    # importing tensorboardX imports torch: seconds per process
  # Fast compiles; and single-threaded Eigen matmuls: with a thread pool Eigen splits a
  # long contraction (the weight gradients sum over all B*T tokens) and adds the parts in
  # the order the threads finish, so on a busy CPU two runs can differ in the last bit.
  c.xla_compiler_options = {{"xla_backend_optimization_level": 0,
                             "xla_llvm_disable_expensive_passes": True,
                             "xla_cpu_multi_thread_eigen": False}}
  return c
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_loop")
  config = root / "tiny_stage2.py"
  config.write_text(CONFIG_FILE.format(experiments=os.path.join(REPO, "experiments"), steps=STEPS))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return dict(root=root, config=str(config), env=env)


def train_command(env, workdir, *flags):
  return [sys.executable, "-m", "janus_jax.train", "--config", env["config"],
          "--workdir", str(workdir), *flags]


def run_to_end(env, workdir, *flags):
  done = subprocess.run(train_command(env, workdir, *flags), env=env["env"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  return done.stdout


def interrupt_at(env, workdir, step: int, signum: int) -> tuple[int, str]:
  """Starts a run and sends `signum` once it has logged `step`; (exit code, stdout).

  A SIGKILLed run gets a private copy of the compilation cache: jax writes cache entries
  in place, and one torn by the kill would break the runs after it.
  """
  run_env = env["env"]
  if signum == signal.SIGKILL:
    private = env["root"] / f"jax_cache_{workdir.name}"
    shutil.copytree(env["root"] / "jax_cache", private, dirs_exist_ok=True)
    run_env = dict(run_env, JAX_COMPILATION_CACHE_DIR=str(private))
  proc = subprocess.Popen(train_command(env, workdir), env=run_env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(f"step {step}/"):
      proc.send_signal(signum)
      break
  lines.extend(proc.stdout)
  return proc.wait(timeout=120), "".join(lines)


def logged_losses(workdir) -> dict[int, float]:
  """step -> loss from metrics.jsonl (a resumed run re-logs steps after its checkpoint)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out.setdefault(record["step"], []).append(record["loss"])
  return out


def exported_params(workdir):
  return flatten_dict(jax.device_get(checkpoint.restore_params(os.path.join(workdir, "export"))))


@pytest.fixture(scope="module")
def straight(env):
  """The uninterrupted reference run."""
  workdir = env["root"] / "straight"
  stdout = run_to_end(env, workdir, "--config.tensorboard=True")
  assert f"reached step {STEPS}" in stdout
  return workdir


def assert_same_run(workdir, reference):
  got, want = exported_params(workdir), exported_params(reference)
  assert got.keys() == want.keys()
  for key in want:
    assert np.array_equal(got[key], want[key]), f"{'/'.join(key)} differs"
  # Every step's loss, including the steps redone after the resume, is bit-identical:
  # the same batches came in the same order.
  got_losses, want_losses = logged_losses(workdir), logged_losses(reference)
  assert sorted(got_losses) == list(range(1, STEPS + 1))
  for step, losses in got_losses.items():
    assert set(losses) == set(want_losses[step]), step


def test_sigterm_and_kill_9_then_resume_are_bit_identical_to_an_uninterrupted_run(env, straight):
  """SIGTERM at step 4 saves that step and exits 0; the rerun resumes there and is killed
  with SIGKILL at step 8 (possibly during a save); the third run resumes from the newest
  complete checkpoint and finishes. Params and every logged loss equal the straight run's."""
  workdir = env["root"] / "interrupted"
  code, stdout = interrupt_at(env, workdir, 4, signal.SIGTERM)
  assert code == 0, stdout
  assert "preempted (SIGTERM): saved step" in stdout
  # The straight run compiled this step program; this process loads it.
  assert "loaded the train step from the compilation cache" in stdout
  saved = int(stdout.split("saved step ")[1].split()[0])
  assert os.path.isdir(workdir / "checkpoints" / str(saved))
  assert not os.path.exists(workdir / "export")

  code, stdout = interrupt_at(env, workdir, 8, signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert f"resumed from step {saved}" in stdout
  complete = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert complete[-1] < STEPS

  stdout = run_to_end(env, workdir)
  assert f"resumed from step {complete[-1]}" in stdout
  assert_same_run(workdir, straight)


def test_export_loads_and_metrics_reach_tensorboard(straight):
  import janus_jax
  from tensorboardX.proto import event_pb2
  loaded = janus_jax.load(str(straight / "export"), dtype="float32")
  assert loaded.config.llm.hidden_size == 64
  # Read the event file back (TFRecord framing: length, crc, Event proto, crc).
  (events,) = os.listdir(straight / "tensorboard")
  data, scalars = (straight / "tensorboard" / events).read_bytes(), {}
  while data:
    length = int.from_bytes(data[:8], "little")
    event = event_pb2.Event.FromString(data[12:12 + length])
    for value in event.summary.value:
      scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    data = data[12 + length + 4:]
  assert sorted(scalars["loss"]) == list(range(1, STEPS + 1))
  assert {"loss/t2i", "loss/understanding", "grad_norm", "learning_rate", "mfu",
          "tokens_per_second", "step_time"} <= set(scalars)
  losses = logged_losses(straight)
  assert scalars["loss"][STEPS] == pytest.approx(losses[STEPS][0], rel=1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_reach_the_losses_of_one_process(env, straight):
  """2 processes x 1 CPU device (gloo collectives), each building only its rows of the
  global batch, vs the one-process run on 2 devices over the same global batches."""
  workdir = env["root"] / "two_processes"
  port = _free_port()
  procs = [subprocess.Popen(
      train_command(env, workdir, "--config.num_steps=3",
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}"),
      env=dict(env["env"], XLA_FLAGS="--xla_force_host_platform_device_count=1"), cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert "on mesh {'data': 1, 'fsdp': 2, 'tensor': 1} (2 process(es))" in outputs[0]
  got, want = logged_losses(workdir), logged_losses(straight)
  assert sorted(got) == list(range(1, 4))
  for step in range(1, 4):
    # The same mesh, with the cross-device sums done by gloo instead of in-process.
    np.testing.assert_allclose(got[step][0], want[step][0], rtol=1e-6)
  # Both processes wrote their shards of the export; it reads back whole.
  params = exported_params(workdir)
  assert params.keys() == exported_params(straight).keys()
  assert all(np.all(np.isfinite(v)) for v in params.values())


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(env, straight):
  """Batch index 6 (step 7) has NaN loss weights: the run stops at step 7 with one error
  line, and the newest checkpoint is step 6, from before the bad step."""
  workdir = env["root"] / "diverged"
  done = subprocess.run(train_command(env, workdir, "--config.data.nan_at_batch=6"),
                        env=env["env"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stdout + done.stderr
  error = done.stderr.strip().splitlines()[-1]
  assert error.startswith("error: non-finite loss (nan)") and "at step 7" in error
  assert f"last good checkpoint is step 6 in {workdir}/checkpoints" in error
  assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [3, 6]
  assert sorted(logged_losses(workdir)) == list(range(1, 7))
  assert not os.path.exists(workdir / "export")


def test_missing_init_checkpoint_is_one_error_line(env, tmp_path):
  cmd = [sys.executable, "-m", "janus_jax.train", "--config",
         os.path.join(REPO, "experiments", "stage3.py") + ":pro_1b", "--workdir", str(tmp_path)]
  done = subprocess.run(cmd, env=env["env"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith("error: config.init.source is "
                                                          "'checkpoint' but config.init.path")
