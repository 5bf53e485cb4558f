"""A rule-based object detector for shapes-world pictures, and GenEval's scoring rules.

`detect` labels every pixel with the nearest palette colour (or background when no colour
is near), takes the connected regions of each colour, and names a region's shape from its
geometry: the fraction of its bounding box it fills (square ~1, circle ~pi/4, triangle
~1/2) and how much of its mass sits in its lower half (an apex-up triangle: ~3/4).
Regions too small, too large, too elongated or of no shape's proportions are dropped
(the detector's confidence threshold). It knows
nothing of the grid, so it works on generated pictures wherever they put things.

`score` applies GenEval's rules to one prompt's metadata (world.geneval_prompts; GenEval's keys): each
include needs at least `count` objects of its shape (the largest `count` all of its colour,
and in the given relation to one of the referred objects); each exclude needs fewer than
`count`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from janus_jax.demo import world

_PALETTE_NAMES = tuple(world.COLOURS)
_PALETTE = np.array([world.COLOURS[c] for c in _PALETTE_NAMES] + [world.BACKGROUND], np.float32)
MAX_COLOUR_DISTANCE = 110.0     # RGB distance beyond which a pixel is background
# Like a detector's confidence threshold: only regions that look like a whole drawn shape
# count (the drawn shapes have 66 px (triangle) to 121 px (square)); fragments such as the
# quarter shapes an untrained model scatters are not objects.
MIN_AREA = 45
MAX_AREA = 170
MAX_ASPECT = 1.4


@dataclasses.dataclass(frozen=True)
class Detection:
  shape: str
  colour: str
  x: float          # centroid, pixels
  y: float
  area: int


def colour_labels(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> int [H, W]: index into the palette colours, -1 for background."""
  pixels = np.asarray(image, np.float32)[..., :3]
  distance = np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1)      # [H, W, 5]
  nearest = distance.argmin(-1)
  background = (nearest == len(_PALETTE_NAMES)) | (distance.min(-1) > MAX_COLOUR_DISTANCE)
  return np.where(background, -1, nearest)


def classify(region: np.ndarray) -> str | None:
  """bool mask of one region -> its shape name, or None when it is not one shape."""
  ys, xs = np.nonzero(region)
  area = len(ys)
  if not MIN_AREA <= area <= MAX_AREA:
    return None
  height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
  if max(height, width) / min(height, width) > MAX_ASPECT:
    return None
  fill = area / (height * width)
  lower = np.mean(ys > (ys.min() + ys.max()) / 2)
  if 0.4 <= fill < 0.65 and lower > 0.6:
    return "triangle"
  if fill >= 0.9 and lower <= 0.6:
    return "square"
  if 0.68 <= fill < 0.9 and lower <= 0.6:
    return "circle"
  return None


def detect(image: np.ndarray) -> list[Detection]:
  """The shapes in a picture, largest first."""
  labels = colour_labels(image)
  found = []
  for index, colour in enumerate(_PALETTE_NAMES):
    regions, count = ndimage.label(labels == index)
    for n in range(1, count + 1):
      region = regions == n
      shape = classify(region)
      if shape is not None:
        ys, xs = np.nonzero(region)
        found.append(Detection(shape, colour, float(xs.mean()), float(ys.mean()), len(ys)))
  return sorted(found, key=lambda d: -d.area)


def relation_holds(a: Detection, relation: str, b: Detection,
                   margin: float = world.CELL / 2) -> bool:
  """`a` is `relation` `b`, by centroids at least `margin` pixels apart on that axis."""
  dx, dy = a.x - b.x, a.y - b.y
  return {"left of": dx < -margin, "right of": dx > margin,
          "above": dy < -margin, "below": dy > margin}[relation]


def score(entry: dict, detections: list[Detection]) -> bool:
  """Whether a picture's detections satisfy a GenEval prompt entry (see module doc)."""
  chosen = []
  for item in entry["include"]:
    found = [d for d in detections if d.shape == item["class"]][:item["count"]]
    chosen.append(found)
    if len(found) < item["count"]:
      return False
    if item.get("color") and any(d.colour != item["color"] for d in found):
      return False
    if item.get("position"):
      relation, index = item["position"]
      if not any(relation_holds(a, relation, b) for a in found for b in chosen[index]):
        return False
  return all(sum(d.shape == item["class"] for d in detections) < item["count"]
             for item in entry.get("exclude", []))
