"""Shared command-line behaviour: user errors print one line and exit 1, no traceback."""
from __future__ import annotations

import sys
from typing import Callable

from janus_jax.errors import CheckpointError


def run(job: Callable[[], str]) -> int:
  try:
    summary = job()
  except (CheckpointError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted; nothing was written.", file=sys.stderr)
    return 130
  print(summary)
  return 0
