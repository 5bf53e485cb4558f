"""What `python -m janus_jax.generate` and `python -m janus_jax.chat` share.

User errors (a bad path, a corrupt image, a prompt too long for the context, a bad flag)
end in one `error: ...` line on stderr and a non-zero exit, never a traceback: usage
errors exit 2 (as argparse does), the rest 1. Real bugs still raise. Nothing here
imports jax, so `--help` and flag errors are instant.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

from convert.cli import one_line

DTYPES = ("bfloat16", "float32")


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one line (the usage itself is under --help)."""

  def error(self, message):
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    sys.exit(2)


def parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace | int:
  """The parsed flags, or the exit code when argparse stopped (--help, a usage error)."""
  try:
    return parser.parse_args(argv)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else 2


def run(job: Callable[[], str | None]) -> int:
  """Runs `job`; prints its summary line (if any) on stdout, or a user error on stderr.

  ValueError covers `CheckpointError` and the sampling / processor checks; OSError
  covers unreadable or unwritable files. Anything else is a bug and keeps its traceback.
  """
  try:
    summary = job()
  except (ValueError, OSError) as e:
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted.", file=sys.stderr)
    return 130
  if summary:
    print(summary)
  return 0


# --- argparse value types: a bad value is a usage error naming the flag -----------------------
def positive_int(text: str) -> int:
  value = int(text)   # argparse reports ValueError as "invalid positive_int value"
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def non_negative_float(text: str) -> float:
  value = float(text)
  if not value >= 0:
    raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
  return value


def probability(text: str) -> float:
  value = float(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
  return value


def mesh_shape(text: str) -> tuple[int, int, int]:
  """"DATA,FSDP,TENSOR", e.g. "1,-1,1" (one size may be -1: the remaining devices)."""
  try:
    sizes = tuple(int(s) for s in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes):
    raise argparse.ArgumentTypeError(f"expected DATA,FSDP,TENSOR such as 1,-1,1; got {text!r}")
  return sizes


def add_model_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", required=True, metavar="DIR",
                      help="converted checkpoint directory (python -m convert), with tokenizer.json")
  parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                      help="parameter and compute dtype (default bfloat16)")
  parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  parser.add_argument("--mesh", type=mesh_shape, default=None, metavar="DATA,FSDP,TENSOR",
                      help="shard params and batch over a device mesh, e.g. 1,-1,1 "
                           "(default: one device)")


# --- loading ----------------------------------------------------------------------------------
def load_model(args: argparse.Namespace):
  """-> (Loaded with a processor, mesh or None, seconds spent loading)."""
  import janus_jax
  from janus_jax import sharding
  start = time.perf_counter()
  mesh = None if args.mesh is None else sharding.make_mesh(*args.mesh)
  loaded = janus_jax.load(args.checkpoint, dtype=args.dtype, mesh=mesh)
  if loaded.processor is None:
    raise ValueError(f"{args.checkpoint} has no tokenizer.json; copy the tokenizer files of the "
                     "original checkpoint into it (python -m convert does this).")
  return loaded, mesh, time.perf_counter() - start


def check_readable_file(path: str, what: str) -> None:
  if not os.path.exists(path):
    raise ValueError(f"{what} {path!r} does not exist.")
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r} is not a file.")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
  """A `--field-name` flag for every int / float field of the dataclass `cls`, defaulting
  to the field's default (the train_vq / train_vision configs)."""
  import dataclasses
  defaults = cls()
  for field in dataclasses.fields(cls):
    parser.add_argument("--" + field.name.replace("_", "-"),
                        type=int if field.type == "int" else float,
                        default=getattr(defaults, field.name))


def dataclass_from_args(cls, args: argparse.Namespace):
  import dataclasses
  return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def read_model_config(value: str):
  """--model-config: a JanusConfig JSON file or a preset name."""
  from janus_jax.config import JanusConfig
  return JanusConfig.from_json(value) if os.path.isfile(value) else JanusConfig.preset(value)


def add_part_training_flags(parser: argparse.ArgumentParser, cls, part: str) -> None:
  """The flags of the CLIs that train one part of a Janus (train_vq, train_vision):
  --model-config, --out, a flag per field of the training config `cls`, --overwrite and
  --no-progress."""
  parser.add_argument("--model-config", required=True,
                      help=f"the JanusConfig (config.json) whose {part} to train, or a preset name")
  parser.add_argument("--out", required=True, help="checkpoint directory to write")
  add_dataclass_flags(parser, cls)
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--no-progress", action="store_true")


def part_training_setup(args: argparse.Namespace, cls):
  """-> (JanusConfig, training config `cls`) from add_part_training_flags' flags; refuses an
  existing --out without --overwrite (ValueError)."""
  if os.path.exists(args.out) and not args.overwrite:
    raise ValueError(f"{args.out} exists; pass --overwrite to replace it.")
  return read_model_config(args.model_config), dataclass_from_args(cls, args)
