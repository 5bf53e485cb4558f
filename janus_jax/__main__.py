"""`python -m janus_jax`: lists the command-line entry points and runs one of them.

`python -m janus_jax --help` prints every entry point, marking the ones not built
yet; `python -m janus_jax COMMAND ARGS...` runs `python -m MODULE ARGS...` for that
command. Deliberately light: nothing here imports jax, so the help is instant.
"""
from __future__ import annotations

import argparse
import pathlib
import runpy
import sys

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parent

# command -> (module run for it, file that exists once it is built, one-line description)
COMMANDS = {
    "convert": ("convert", _REPO_DIR / "convert" / "__main__.py",
                "PyTorch checkpoint (safetensors/.bin) -> Orbax checkpoint directory"),
    "generate": ("janus_jax.generate", _PACKAGE_DIR / "generate.py",
                 "text-to-image sampling with classifier-free guidance -> PNG files"),
    "chat": ("janus_jax.chat", _PACKAGE_DIR / "chat.py",
             "answer a question about an image"),
    "train": ("janus_jax.train", _PACKAGE_DIR / "train" / "__main__.py",
              "train a stage from an experiments/<file>.py:<arg> config"),
    "train_vq": ("janus_jax.train_vq", _PACKAGE_DIR / "train_vq.py",
                 "train a VQ image tokenizer from scratch on a folder of images"),
    "train_vision": ("janus_jax.train_vision", _PACKAGE_DIR / "train_vision.py",
                     "pretrain the understanding encoder on image-caption pairs"),
    "prepare": ("janus_jax.data.prepare", _PACKAGE_DIR / "data" / "prepare.py",
                "raw data -> a TFDS / ArrayRecord training data set"),
    "demo": ("janus_jax.demo", _PACKAGE_DIR / "demo" / "__main__.py",
             "train a small Janus from nothing on a shapes world, score it, write a report"),
}


def _is_built(command: str) -> bool:
  return COMMANDS[command][1].is_file()


def _epilog() -> str:
  lines = ["entry points (each also runs as `python -m MODULE`):"]
  for command, (module, _, description) in COMMANDS.items():
    status = "" if _is_built(command) else "  (not yet built)"
    lines.append(f"  {command:<12} python -m {module:<22} {description}{status}")
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m janus_jax",
      description="Janus / Janus-Pro in JAX/Flax: command-line entry points.",
      epilog=_epilog(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND",
                      help="one of: " + ", ".join(COMMANDS))
  parser.add_argument("args", nargs=argparse.REMAINDER,
                      help="arguments passed on to the command (try COMMAND --help)")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if ns.command is None:
    parser.print_help()
    return 0
  module = COMMANDS[ns.command][0]
  if not _is_built(ns.command):
    print(f"janus_jax: `{ns.command}` is not yet built (planned as `python -m {module}`).",
          file=sys.stderr)
    return 2
  sys.argv = [sys.argv[0], *ns.args]  # runpy replaces argv[0] with the module's path
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
