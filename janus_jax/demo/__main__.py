"""python -m janus_jax.demo --workdir DIR [--quick]: train a small Janus from nothing, score it.

The full run takes about 15 minutes on a 2-core CPU, --quick about 3. A rerun in the same
workdir continues where it stopped (finished phases are kept). See janus_jax/demo/__init__.py.
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
  parser.add_argument("--quick", action="store_true", help="a smaller run (about 3 minutes)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args(argv)
  from janus_jax.demo.run import FULL, QUICK, Demo
  plan = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed)
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
