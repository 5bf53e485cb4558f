"""A small byte-level BPE tokenizer.json with Janus' special tokens at fixed ids.

The ids match `tests.reference.TOKENS`, so converted tiny checkpoints find their
special tokens in the tokenizer exactly as released checkpoints do.
"""
from __future__ import annotations

import os

SPECIAL = ["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<|User|>",
           "<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|Assistant|>"]

CORPUS = [
    "a red circle above a blue square", "What colour is the circle? red",
    "How many shapes are there? two", "Is there a triangle? no",
    "You are a helpful language and vision assistant.",
    "a photo of a cat sitting on a mat next to a green ball",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]


def write_tokenizer(directory: str, vocab_size: int = 300) -> str:
  from janus_jax.demo.data import byte_level_bpe
  path = os.path.join(directory, "tokenizer.json")
  byte_level_bpe(CORPUS * 4, vocab_size, SPECIAL).save(path)
  return path
