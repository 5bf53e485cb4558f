"""python -m janus_jax.train --config experiments/<stage>.py:<variant> --workdir DIR [--config.x=y]

Runs or resumes one training stage. Several processes (a TPU pod slice, or processes on
one machine) join through jax.distributed: on Cloud TPU pass --distributed (the runtime
finds its peers); elsewhere pass --coordinator_address, --num_processes and --process_id
to every process. Exits 0 when the run finished or was preempted (SIGTERM; it saved),
1 on a user error or a diverged run, 2 on a bad flag, config or override (one `error:`
line each).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiments/<stage>.py:<variant>, e.g. experiments/stage2.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, logs, export")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() with auto-detection "
                                 "(Cloud TPU pods, SLURM)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process without auto-detection)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", "gloo",
                                       "collectives between CPU processes (gloo or mpi)")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed():
  import jax
  if _COORDINATOR.value is not None:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()


def _parse_flags(argv):
  """absl's flag parsing, with a user's mistake (a bad config file, variant or override)
  reported in one line instead of ml_collections' traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:   # --config.<name> that the config lacks
    print(f"error: unknown config field {str(e).strip(chr(34))} in a --config.* override; the "
          "fields are those of janus_jax/train/recipe.py:base_config.", file=sys.stderr)
    sys.exit(2)
  except (flags.Error, TypeError, ValueError) as e:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    # config_flags wraps the config file's exception with its traceback: keep the first
    # line (which flag) and the last (what went wrong).
    message = lines[-1] if len(lines) < 3 else f"{lines[0]} {lines[-1]}"
    print(f"error: {message} (see python -m janus_jax.train --help)", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from convert.cli import one_line
  # Orbax logs every save step at INFO; the loop prints what matters.
  logging.set_verbosity(logging.WARNING)
  try:
    _initialize_distributed()
    from janus_jax import xla
    cache = _CONFIG.value.get("compilation_cache_dir", "auto")
    xla.use_compilation_cache(None if cache == "auto" else cache)
    from janus_jax.train.loop import train
    summary = train(_CONFIG.value, _WORKDIR.value,
                    log=lambda line: print(line, flush=True))
  except (ValueError, OSError) as e:
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    return 1
  state = "preempted at" if summary["preempted"] else "reached"
  print(f"{state} step {summary['step']}; checkpoints in {_WORKDIR.value}/checkpoints"
        + (f"; export in {summary['export']}" if summary.get("export") else ""), flush=True)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
