"""Converter speed and memory beside a plain copy of the same files, in the same run.

  python experiments/make_fake_checkpoint.py /tmp/fake7b --format bin
  python experiments/bench_convert.py /tmp/fake7b [--repeats 2] [--workdir /tmp/bench]

Each repeat copies SRC with `cp -r` and converts it with `python -m convert` (bfloat16),
alternating so both see the same page-cache conditions; reports the medians, the peak
resident memory of the converter (from the kernel's rusage of that process), and the
ratios the issue sets targets for (peak RSS <= 1.1x the size on disk, time <= 3x cp).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str]) -> tuple[float, int]:
  """Wall seconds and peak RSS (bytes) of one child process."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    sys.exit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
  if out.strip():
    print("   ", out.strip().splitlines()[-1])
  return wall, usage.ru_maxrss * 1024


def disk_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("src")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--workdir", default="/tmp/janus_bench_convert")
  args = parser.parse_args(argv)
  size = disk_size(args.src)
  os.makedirs(args.workdir, exist_ok=True)
  copy_dst, conv_dst = os.path.join(args.workdir, "copy"), os.path.join(args.workdir, "converted")
  copies, converts, peaks = [], [], []
  for i in range(args.repeats):
    for d in (copy_dst, conv_dst):
      shutil.rmtree(d, ignore_errors=True)
    wall, _ = run(["cp", "-r", args.src, copy_dst])
    copies.append(wall)
    shutil.rmtree(copy_dst)
    wall, peak = run([sys.executable, "-m", "convert", args.src, conv_dst, "--quiet",
                      "--dtype", "bfloat16"])
    converts.append(wall)
    peaks.append(peak)
    print(f"repeat {i + 1}: cp {copies[-1]:.1f} s, convert {wall:.1f} s, "
          f"peak RSS {peak / 1e9:.2f} GB")
  shutil.rmtree(conv_dst, ignore_errors=True)
  cp, conv, peak = statistics.median(copies), statistics.median(converts), max(peaks)
  print(f"checkpoint {args.src}: {size / 1e9:.2f} GB on disk")
  print(f"convert: median {conv:.1f} s = {conv / cp:.2f} x cp ({cp:.1f} s)   [target <= 3x]")
  print(f"peak RSS: {peak / 1e9:.2f} GB = {peak / size:.2f} x size on disk   "
        f"[target <= 1.1x, stretch <= 0.5x]")


if __name__ == "__main__":
  main()
