"""The demo's two scores: mini-GenEval (text -> image) and VQA accuracy (image + question).

mini-GenEval: `python -m janus_jax.generate --prompts-file evaluation_metadata.jsonl`
writes GenEval's folder layout (OUT/<index>/metadata.jsonl, OUT/<index>/samples/<n>.png);
`score_geneval` reads it back like GenEval's own evaluation does, with the shapes-world
detector in place of the object detector: per-image correctness, accuracy per category,
and the overall score as GenEval reports it (the mean over categories).

VQA: greedy answers from `janus_jax.sampling.generate_text` to held-out questions about
held-out pictures; an answer counts when it equals the expected one after normalisation
(lower case, no punctuation, no articles, surrounding space dropped).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import re

import numpy as np
from PIL import Image

from janus_jax.demo import detector, world


def score_geneval(folder: str) -> dict:
  """Scores a GenEval-layout folder -> {"categories": {tag: accuracy}, "overall",
  "images", "prompts": [{"index", "prompt", "tag", "correct": [bool per image]}]}."""
  prompts = []
  per_category = collections.defaultdict(list)
  for directory in sorted(glob.glob(os.path.join(folder, "[0-9]" * 5))):
    with open(os.path.join(directory, "metadata.jsonl"), encoding="utf-8") as f:
      entry = json.loads(f.readline())
    samples = sorted(glob.glob(os.path.join(directory, "samples", "*.png")))
    correct = [detector.score(entry, detector.detect(np.asarray(Image.open(path).convert("RGB"))))
               for path in samples]
    per_category[entry["tag"]] += correct
    prompts.append(dict(index=int(os.path.basename(directory)), prompt=entry["prompt"],
                        tag=entry["tag"], correct=correct))
  if not prompts:
    raise ValueError(f"{folder} holds no GenEval prompt folders (00000/, 00001/, ...).")
  categories = {tag: float(np.mean(per_category[tag]))
                for tag in world.CATEGORIES if per_category.get(tag)}
  return dict(categories=categories, overall=float(np.mean(list(categories.values()))),
              images=sum(len(p["correct"]) for p in prompts), prompts=prompts)


def normalise_answer(text: str) -> str:
  words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
  return " ".join(w for w in words if w not in ("a", "an", "the"))


def read_vqa(data_dir: str, limit: int | None = None) -> list[dict]:
  """The held-out questions: {"image" (absolute path), "question", "answer"}."""
  rows = []
  with open(os.path.join(data_dir, "eval_vqa.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      row["image"] = os.path.join(data_dir, row["image"])
      rows.append(row)
  return rows[:limit] if limit else rows


def score_vqa(loaded, rows: list[dict], *, batch_size: int = 64, max_new_tokens: int = 4,
              progress: bool = True) -> dict:
  """Greedy answers of `loaded` (janus_jax.load) to `rows` -> {"accuracy", "by_question",
  "answers": [{"image", "question", "answer", "expected", "correct"}]}."""
  from tqdm import tqdm
  from janus_jax import sampling
  answers = []
  for start in tqdm(range(0, len(rows), batch_size), desc="VQA", unit="batch",
                    disable=not progress):
    chunk = rows[start:start + batch_size]
    # The last chunk is padded to the batch size: one compiled program for all chunks.
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    out = sampling.generate_text(loaded, [r["question"] for r in padded],
                                 [r["image"] for r in padded], max_new_tokens=max_new_tokens)
    answers += out[:len(chunk)]
  results, by_question = [], collections.defaultdict(list)
  for row, answer in zip(rows, answers):
    correct = normalise_answer(answer) == normalise_answer(row["answer"])
    results.append(dict(image=row["image"], question=row["question"], answer=answer,
                        expected=row["answer"], correct=correct))
    kind = re.sub(r"\b(circle|square|triangle|red|green|blue|yellow)s?\b", "X", row["question"])
    by_question[kind].append(correct)
  return dict(accuracy=float(np.mean([r["correct"] for r in results])),
              by_question={k: float(np.mean(v)) for k, v in sorted(by_question.items())},
              answers=results)
