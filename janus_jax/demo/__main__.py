"""python -m janus_jax.demo --workdir DIR [--quick]: train a small Janus from nothing, score it.

The full run fits a budget of 14.5 minutes (--minutes; Stages II and III train as many steps
as fit it on this machine); --quick runs fixed steps (2.6 minutes on a 2-core Zen 4, 7.4 on
a Zen 3). A rerun in the same workdir continues where it stopped (finished phases are
kept). See janus_jax/demo/__init__.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m janus_jax.demo",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="where data, checkpoints and the "
                      "report go (created if needed)")
  parser.add_argument("--quick", action="store_true",
                      help="a smaller run of fixed steps (minutes, not a quarter hour)")
  parser.add_argument("--minutes", type=float, help="time budget of the full run (default "
                      "14.5): Stages II and III train as many of their steps as fit it")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args(argv)
  from janus_jax.demo.run import FULL, QUICK, Demo
  if args.minutes is not None and (args.quick or args.minutes <= 0):
    parser.error("--minutes takes a positive budget for the full run (not with --quick)")
  plan = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed)
  if args.minutes is not None:
    plan = dataclasses.replace(plan, minutes=args.minutes)
  from janus_jax import xla
  xla.use_compilation_cache()
  try:
    summary = Demo(args.workdir, plan, progress=not args.quiet,
                   log=lambda line: print(line, file=sys.stderr, flush=True)).run()
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"demo finished: {summary['headline']}. Report: {summary['report']}; checkpoint: "
        f"{summary['checkpoint']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
