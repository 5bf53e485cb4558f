"""python -m janus_jax.chat --checkpoint DIR [--image FILE ...] [--question TEXT] [options]

Answers a question about one or more images. Only the answer goes to stdout; timings
and the interactive prompt go to stderr.

Without --question: an interactive conversation. Each line read from stdin is a
question; the previous questions and answers are kept as the multi-turn history, with
the images attached to the first question. An empty line, `exit` or end of input
ends it. With sampling (--temperature > 0), turn k uses seed + k.
"""
from __future__ import annotations

import argparse
import sys

from janus_jax import cli_common

QUIT = ("", "exit", "quit")


def _parser():
  parser = cli_common.ArgumentParser(
      prog="python -m janus_jax.chat",
      description="Visual chat: answer questions about images.",
      epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  cli_common.add_model_args(parser)
  parser.add_argument("--image", action="append", default=[], metavar="FILE",
                      help="image to ask about (repeat for several, in order)")
  parser.add_argument("--question", metavar="TEXT",
                      help="the question; without it, read questions from stdin")
  parser.add_argument("--max-new-tokens", type=cli_common.positive_int, default=512, metavar="N",
                      help="longest answer in tokens (default 512)")
  parser.add_argument("--temperature", type=cli_common.non_negative_float, default=0.0,
                      metavar="T", help="0 answers greedily (default); > 0 samples")
  parser.add_argument("--top-p", type=cli_common.probability, default=None, metavar="P",
                      help="nucleus sampling mass when sampling (default: off)")
  return parser


def conversation(history: list[tuple[str, str]], question: str, num_images: int,
                 processor) -> list[dict]:
  """(question, answer) pairs + the new question -> [{"role", "content"}, ...] turns; the
  images go into the first turn where the processor places them (Processor.place_images)."""
  turns = []
  for asked, answered in history:
    turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
  turns.append({"role": "user", "content": question})
  turns[0] = {"role": "user", "content": processor.place_images(turns[0]["content"], num_images)}
  return turns


class _Chat:
  """The loaded model and the answer settings; `ask` answers one conversation."""

  def __init__(self, args, images):
    self.args, self.images = args, images
    self.model, self.mesh, load_s = cli_common.load_model(args)
    print(f"loaded {args.checkpoint} in {load_s:.1f} s", file=sys.stderr)

  def ask(self, question, turn: int = 0) -> str:
    """question: a string or a list of turns -> the answer (timings to stderr)."""
    from janus_jax import sampling
    timings = {}
    answer = sampling.generate_text(
        self.model, [question], [self.images], max_new_tokens=self.args.max_new_tokens,
        temperature=self.args.temperature, top_p=self.args.top_p, seed=self.args.seed + turn,
        mesh=self.mesh, timings=timings)[0]
    print(f"[{timings['steps']} tokens; compile {timings['compile_s']:.2f} s, answer "
          f"{timings['generate_s']:.2f} s]", file=sys.stderr)
    return answer


def _interactive(chat: _Chat) -> None:
  history: list[tuple[str, str]] = []
  while True:
    print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    question = line.strip()
    if not line or question.lower() in QUIT:
      if not line:
        print(file=sys.stderr)   # end the "> " line at EOF
      return
    try:
      answer = chat.ask(conversation(history, question, len(chat.images), chat.model.processor),
                        turn=len(history))
    except ValueError as e:   # e.g. the conversation outgrew the context: keep the session
      print(f"error: {cli_common.one_line(e)}", file=sys.stderr)
      continue
    print(answer, flush=True)
    if answer.strip():
      history.append((question, answer))
    else:   # an empty assistant turn cannot be part of a conversation prompt
      print("(empty answer; this question is not kept in the history)", file=sys.stderr)


def _chat(args) -> None:
  if args.question is not None and not args.question.strip():
    raise ValueError("empty question; ask something about the image.")
  from janus_jax.processor import load_image
  images = []
  for path in args.image:   # check the images before spending time on loading the model
    cli_common.check_readable_file(path, "image file")
    images.append(load_image(path))
  chat = _Chat(args, images)
  if args.question is not None:
    print(chat.ask(args.question))
  else:
    _interactive(chat)


def main(argv=None) -> int:
  args = cli_common.parse(_parser(), argv)
  if isinstance(args, int):
    return args
  from janus_jax import xla
  xla.use_compilation_cache()
  return cli_common.run(lambda: _chat(args))


if __name__ == "__main__":
  sys.exit(main())
