"""Shared command-line behaviour: user errors print one line and exit 1, no traceback."""
from __future__ import annotations

import re
import sys
from typing import Callable

from janus_jax.errors import CheckpointError


def one_line(error: BaseException) -> str:
  """The message of `error` on one line (some libraries' messages span several)."""
  text = re.sub(r"\s*\n\s*", " ", str(error)).strip()
  return text or type(error).__name__


def run(job: Callable[[], str]) -> int:
  try:
    summary = job()
  except (CheckpointError, OSError) as e:   # OSError: unreadable SRC, full disk, ...
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted; nothing was written.", file=sys.stderr)
    return 130
  print(summary)
  return 0
