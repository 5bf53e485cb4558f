"""The shapes world: scenes of coloured shapes on a 3 x 3 grid, their pictures and words.

A scene holds one to three objects, each a (shape, colour) in its own cell of a 3 x 3 grid.
It is rendered exactly (no randomness beyond the scene), so a picture is a function of
its scene. Everything said about a scene is true of it:

  captions   complete descriptions in GenEval's families (single object, colours, two
             objects, counting, colour attribution, position) plus listings of three objects,
             naming objects in reading order (`captions`);
  questions  one-word answers: colour of a shape, shape of a colour, how many shapes, how
             many of a shape, is there a ... ;
  texts      plain sentences about the scene.

The held-out split: scenes are drawn from disjoint seeds for training and evaluation, and
the colour-attribution and position prompts in HELD_OUT_PROMPTS never appear in training
captions (their combinations must be composed from the parts).
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 230),
           "yellow": (235, 200, 30)}
BACKGROUND = (255, 255, 255)
GRID = 3
CELL = 16                       # pixels per cell: images are 48 x 48
IMAGE_SIZE = GRID * CELL
NUMBERS = {0: "zero", 1: "one", 2: "two", 3: "three"}
ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "centre", "right")
# GenEval's categories, in its order.
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  colour: str
  cell: int            # row-major index in the 3 x 3 grid

  @property
  def row(self) -> int:
    return self.cell // GRID

  @property
  def col(self) -> int:
    return self.cell % GRID


Scene = tuple[Obj, ...]


def plural(shape: str) -> str:
  return shape + "s"


def relation_holds(a: Obj, relation: str, b: Obj) -> bool:
  """Whether `a` is `relation` `b` (by grid column / row)."""
  return {"left of": a.col < b.col, "right of": a.col > b.col,
          "above": a.row < b.row, "below": a.row > b.row}[relation]


# --- held-out prompts ---------------------------------------------------------------------
def _colour_attr_prompt(a: Obj, b: Obj) -> str:
  return f"a {a.colour} {a.shape} and a {b.colour} {b.shape}"


def _position_prompt(a: Obj, relation: str, b: Obj) -> str:
  return f"a {a.shape} {relation} a {b.shape}"


def _held_out() -> frozenset[str]:
  """One in five colour-attribution prompts and one in five position prompts (fixed)."""
  rng = random.Random(20251125)
  attr = [f"a {c1} {s1} and a {c2} {s2}" for s1, s2 in itertools.permutations(SHAPES, 2)
          for c1 in COLOURS for c2 in COLOURS]
  position = [f"a {s1} {r} a {s2}" for s1, s2 in itertools.permutations(SHAPES, 2)
              for r in RELATIONS]
  return frozenset(rng.sample(attr, len(attr) // 5) + rng.sample(position, len(position) // 5))


HELD_OUT_PROMPTS = _held_out()


# --- scenes -------------------------------------------------------------------------------
def random_scene(rng: random.Random, num_objects: int | None = None,
                 shapes: Sequence[str] | None = None,
                 colours: Sequence[str] | None = None) -> Scene:
  """A scene of `num_objects` (default 1-3) objects in distinct cells; `shapes` / `colours`
  fix them per object when given."""
  n = num_objects or rng.randint(1, 3)
  cells = rng.sample(range(GRID * GRID), n)
  return tuple(Obj(shapes[i] if shapes else rng.choice(SHAPES),
                   colours[i] if colours else rng.choice(tuple(COLOURS)), cells[i])
               for i in range(n))


def dense_scene(rng: random.Random, fill: float = 0.6) -> Scene:
  """A scene with each cell holding a random object with probability `fill` (at least
  one): pictures of many objects, the VQ tokenizer's training data (most of their pixels
  are objects, so it learns them in few steps)."""
  cells = [c for c in range(GRID * GRID) if rng.random() < fill] or [rng.randrange(GRID * GRID)]
  return tuple(Obj(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), c) for c in cells)


def _mask(shape: str, size: int = CELL) -> np.ndarray:
  """bool [size, size]: the shape centred in a cell, sampled at pixel centres."""
  y, x = np.mgrid[0:size, 0:size] + 0.5
  c = size / 2
  if shape == "circle":
    return (x - c) ** 2 + (y - c) ** 2 <= 6.0 ** 2
  if shape == "square":
    return (abs(x - c) <= 5.0) & (abs(y - c) <= 5.0)
  if shape == "triangle":       # apex up, base 12, height 11
    top, bottom = c - 5.5, c + 5.5
    half = (y - top) / (bottom - top) * 6.0
    return (y >= top) & (y <= bottom) & (abs(x - c) <= half)
  raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}.")


_MASKS = {shape: _mask(shape) for shape in SHAPES}


def render(scene: Scene) -> np.ndarray:
  """uint8 [48, 48, 3]: the scene on a white background."""
  image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  image[:] = BACKGROUND
  for obj in scene:
    cell = image[obj.row * CELL:(obj.row + 1) * CELL, obj.col * CELL:(obj.col + 1) * CELL]
    cell[_MASKS[obj.shape]] = COLOURS[obj.colour]
  return image


# --- captions -----------------------------------------------------------------------------
def _count_phrase(n: int, shape: str, colour: str = "") -> str:
  words = f"{colour} " if colour else ""
  return f"a {words}{shape}" if n == 1 else f"{NUMBERS[n]} {words}{plural(shape)}"


def _listing(parts: list[str]) -> str:
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def reading_order(scene: Scene) -> Scene:
  """The objects as a reader meets them: rows top to bottom, each row left to right."""
  return tuple(sorted(scene, key=lambda o: o.cell))


def captions(scene: Scene) -> list[tuple[str, str]]:
  """Every (category, caption) that describes `scene` completely. Categories are GenEval's
  where the caption has its form, else "listing".

  Captions that list objects name them in reading order, the order in which the image
  tokens are generated (raster order), so "a red square and a blue triangle" is a picture
  whose red square comes first; position captions are said both ways ("a circle above a
  square", "a square below a circle"). With every order of the listed objects, the model
  drew the wrong colours on its shapes: mini-GenEval colour attribution 0.10 -> 0.54 at equal
  steps (README, "The demo")."""
  out = []
  shapes = [o.shape for o in scene]
  if len(scene) == 1:
    (o,) = scene
    out += [("single_object", f"a {o.shape}"), ("colors", f"a {o.colour} {o.shape}")]
  if len(set(shapes)) == 1 and len(scene) > 1:
    out.append(("counting", _count_phrase(len(scene), shapes[0])))
    if len({o.colour for o in scene}) == 1:
      out.append(("listing", _count_phrase(len(scene), shapes[0], scene[0].colour)))
  if len(scene) == 2:
    a, b = reading_order(scene)
    if a.shape != b.shape:
      out.append(("two_object", f"a {a.shape} and a {b.shape}"))
      out.append(("color_attr", _colour_attr_prompt(a, b)))
      out += [("position", _position_prompt(x, r, y)) for x, y in ((a, b), (b, a))
              for r in RELATIONS if relation_holds(x, r, y)]
    elif a.colour != b.colour:
      out.append(("listing", f"a {a.colour} {a.shape} and a {b.colour} {b.shape}"))
  if len(scene) == 3:
    out.append(("listing", _listing([f"a {o.colour} {o.shape}" for o in reading_order(scene)])))
  return [(category, text) for category, text in out if text not in HELD_OUT_PROMPTS]


def random_caption(scene: Scene, rng: random.Random) -> tuple[str, str]:
  """One caption of `scene`, its category first drawn uniformly among those it has."""
  options = captions(scene)
  categories = sorted({c for c, _ in options})
  category = rng.choice(categories)
  return category, rng.choice([t for c, t in options if c == category])


# --- questions and texts -------------------------------------------------------------------
def questions(scene: Scene) -> list[tuple[str, str]]:
  """Every (question, one-word answer) about `scene` this world asks."""
  out = [("How many shapes are there?", NUMBERS[len(scene)])]
  for shape in SHAPES:
    matches = [o for o in scene if o.shape == shape]
    out.append((f"How many {plural(shape)} are there?", NUMBERS[len(matches)]))
    out.append((f"Is there a {shape}?", "yes" if matches else "no"))
    if len(matches) == 1:
      out.append((f"What colour is the {shape}?", matches[0].colour))
  for colour in COLOURS:
    matches = [o for o in scene if o.colour == colour]
    if len(matches) == 1:
      out.append((f"What shape is {colour}?", matches[0].shape))
  return out


def random_questions(scene: Scene, rng: random.Random, n: int) -> list[tuple[str, str]]:
  """`n` distinct questions about `scene` (fewer if it has fewer), drawn uniformly."""
  pool = questions(scene)
  rng.shuffle(pool)
  return pool[:n]


def describe(scene: Scene) -> str:
  """A plain-text sentence about the scene (the text-only data)."""
  parts = [f"a {o.colour} {o.shape} in the {ROW_NAMES[o.row]} {COL_NAMES[o.col]}"
           if (o.row, o.col) != (1, 1) else f"a {o.colour} {o.shape} in the middle"
           for o in scene]
  n = len(scene)
  return (f"There {'is' if n == 1 else 'are'} {NUMBERS[n]} shape{'s' * (n > 1)}: "
          f"{_listing(parts)}.")


# --- GenEval-style evaluation prompts ------------------------------------------------------
def geneval_prompts(per_category: int, seed: int) -> list[dict]:
  """`per_category` prompts of each GenEval category, in GenEval's metadata form:
  {"tag", "prompt", "include": [{"class", "count", "color"?, "position"?}],
   "exclude": [{"class", "count"}]} — include: at least `count` such objects (all of
  the colour; the first `position` = (relation, index of the include it refers to));
  exclude: fewer than `count` (so counting prompts ask for exactly n).

  Colour-attribution and position prompts come from HELD_OUT_PROMPTS (never in training
  captions); the other categories are small enough that their prompts all occur in
  training (with other pictures).
  """
  rng = random.Random(seed)
  out = []
  held = sorted(HELD_OUT_PROMPTS)
  attr = [p for p in held if " and " in p]
  position = [p for p in held if " and " not in p]
  rng.shuffle(attr)
  rng.shuffle(position)
  for category in CATEGORIES:
    for i in range(per_category):
      entry = dict(tag=category, exclude=[])
      if category == "single_object":
        s = SHAPES[i % len(SHAPES)]
        entry.update(prompt=f"a {s}", include=[{"class": s, "count": 1}])
      elif category == "colors":
        s, c = rng.choice(SHAPES), tuple(COLOURS)[i % len(COLOURS)]
        entry.update(prompt=f"a {c} {s}", include=[{"class": s, "color": c, "count": 1}])
      elif category == "two_object":
        s1, s2 = rng.sample(SHAPES, 2)
        entry.update(prompt=f"a {s1} and a {s2}",
                     include=[{"class": s1, "count": 1}, {"class": s2, "count": 1}])
      elif category == "counting":
        s, n = SHAPES[i % len(SHAPES)], 2 + (i // len(SHAPES)) % 2
        entry.update(prompt=_count_phrase(n, s), include=[{"class": s, "count": n}],
                     exclude=[{"class": s, "count": n + 1}])
      elif category == "color_attr":
        words = attr[i % len(attr)].split()
        entry.update(prompt=attr[i % len(attr)],
                     include=[{"class": words[2], "color": words[1], "count": 1},
                              {"class": words[6], "color": words[5], "count": 1}])
      else:
        prompt = position[i % len(position)]
        words = prompt.split()
        s1, s2, relation = words[1], words[-1], " ".join(words[2:-2])
        entry.update(prompt=prompt, include=[{"class": s2, "count": 1},
                                             {"class": s1, "count": 1, "position": [relation, 0]}])
      out.append(entry)
  return out


def scene_for_prompt(entry: dict, rng: random.Random) -> Scene:
  """A ground-truth scene that satisfies a geneval_prompts entry (for validating the
  detector)."""
  while True:
    objs = []
    for item in entry["include"]:
      for _ in range(item["count"]):
        objs.append((item["class"], item.get("color") or rng.choice(tuple(COLOURS))))
    scene = random_scene(rng, len(objs), [s for s, _ in objs], [c for _, c in objs])
    position = entry["include"][-1].get("position")
    if position is None or relation_holds(scene[-1], position[0], scene[position[1]]):
      return scene
