"""Which parameters train: regex rules over param paths, and the trainable/frozen split.

A param path is its keys joined by "/" ("llm/layers/attn/q", "gen_head/fc2/bias"). A
stage lists the patterns of the parameters it trains; a parameter trains when one
pattern matches its whole path (`re.fullmatch`). The VQ tokenizer never trains.

The train step differentiates only the trainable subtree (the frozen one is closed over),
so frozen parameters get no weight gradients and no optimizer state.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from flax.traverse_util import flatten_dict, unflatten_dict

# Never trained, whatever a config says (JANUS.md §6.2).
NEVER_TRAINED = re.compile(r"vq(/.*)?")

# Janus-Pro's stages (JANUS.md §6.2, DESIGN.md "The three training stages").
STAGE_I = ("aligner/.*", "gen_aligner/.*", "gen_embed/.*", "gen_head/.*")
STAGE_II = STAGE_I + ("llm/.*",)
STAGE_III = STAGE_II + ("vision/.*",)


def path_of(key: tuple) -> str:
  return "/".join(str(k) for k in key)


def trainable_mask(params: Mapping, patterns: Iterable[str]) -> dict:
  """A tree like `params` of bools: True where some pattern fully matches the path.

  Raises ValueError for a pattern that matches nothing (a typo would otherwise freeze
  silently) or that would train the VQ tokenizer.
  """
  patterns = list(patterns)
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"trainable pattern {pattern!r} is not a valid regex: {e}") from None
  flat = flatten_dict(params)
  mask, used = {}, set()
  for key in flat:
    path = path_of(key)
    hits = [p.pattern for p in compiled if p.fullmatch(path)]
    if hits and NEVER_TRAINED.fullmatch(path):
      raise ValueError(f"trainable pattern {hits[0]!r} matches {path}: the VQ tokenizer is never "
                       "trained; narrow the pattern.")
    used.update(hits)
    mask[key] = bool(hits)
  unused = [p for p in patterns if p not in used]
  if unused:
    raise ValueError(f"trainable patterns {unused} match no parameter; paths look like "
                     f"{path_of(next(iter(flat)))!r} (keys joined by '/').")
  return unflatten_dict(mask)


def split(params: Mapping, mask: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen): two disjoint nested dicts holding the leaves of `params`."""
  flat, flat_mask = flatten_dict(params), flatten_dict(mask)
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return unflatten_dict(trainable), unflatten_dict(frozen)


def merge(trainable: Mapping, frozen: Mapping) -> dict:
  """The full param tree from its two parts (inverse of `split`)."""
  flat = dict(flatten_dict(frozen))
  flat.update(flatten_dict(trainable))
  return unflatten_dict(flat)


def count(tree: Mapping) -> int:
  """Number of scalars in a tree of arrays (or ShapeDtypeStructs)."""
  total = 0
  for leaf in flatten_dict(tree).values():
    size = 1
    for d in leaf.shape:
      size *= d
    total += size
  return total
