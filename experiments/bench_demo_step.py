"""The demo's Stage II train step with and without a layer loop, on a finished demo workdir.

  python experiments/bench_demo_step.py --workdir DEMO_DIR [--repeats 8] [--unroll 1,64]

Builds the demo's Stage II run (`Demo.stage_config` under the workdir's plan: its prepared
data, its Stage I export as the starting point) once per `--unroll` value (the model's
`scan_unroll`: 1 = `nn.scan` over the layers, >= num_layers = no loop), compiles the step
for the same first batch and times `--repeats` steps of each, alternating between them so
that load on a shared machine hits both alike. Prints medians, the ratio to the first
value and the summed loss of the step (equal up to float rounding: the same arithmetic).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from janus_jax.demo.run import Demo, plan_of  # noqa: E402
from janus_jax.train import loop  # noqa: E402


def build(workdir: str, unroll: int):
  demo = Demo(workdir, plan_of(workdir), progress=False)
  config = demo.stage_config(2, demo.path("stage1", "export"), demo.sources())
  config.model.scan_unroll = unroll
  run = loop.setup(config)
  batch = next(run.data())
  trainable, frozen = run.params()
  start = time.perf_counter()
  compiled = run.compile(batch)
  return dict(compiled=compiled, state=run.new_state(trainable), frozen=frozen, batch=batch,
              compile=time.perf_counter() - start, times=[])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a finished `python -m janus_jax.demo` workdir")
  parser.add_argument("--repeats", type=int, default=8)
  parser.add_argument("--unroll", default="1,64", help="comma-separated scan_unroll values")
  args = parser.parse_args(argv)
  if not os.path.isdir(os.path.join(args.workdir, "stage1", "export")):
    print(f"error: {args.workdir} has no stage1/export; run the demo there first.", file=sys.stderr)
    return 2
  runs = {int(u): build(args.workdir, int(u)) for u in args.unroll.split(",")}
  for _ in range(2):                                  # warm up
    for r in runs.values():
      r["state"], metrics = r["compiled"](r["state"], r["frozen"], r["batch"])
      jax.block_until_ready(metrics)
      r.setdefault("loss", float(metrics["loss_sum"]))
  for _ in range(args.repeats):
    for r in runs.values():
      start = time.perf_counter()
      r["state"], metrics = r["compiled"](r["state"], r["frozen"], r["batch"])
      jax.block_until_ready(metrics)
      r["times"].append(time.perf_counter() - start)
  first = statistics.median(next(iter(runs.values()))["times"])
  for unroll, r in runs.items():
    step = statistics.median(r["times"])
    print(f"scan_unroll {unroll:3d}: {step:.3f} s/step (median of {args.repeats}), "
          f"{first / step:.2f}x the first; compile {r['compile']:.1f} s; first-step loss sum "
          f"{r['loss']:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
