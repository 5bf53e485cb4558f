"""The demo's raw data (pictures + JSONL in the inputs `prepare` reads) and its tokenizer.

  <dir>/images/{train,eval}/<n>.png   the pictures (48 x 48)
  <dir>/images/vq/<n>.png             denser pictures (world.dense_scene) to train the VQ on
  <dir>/t2i.jsonl                     {"image", "caption"}: `captions_per_image` per picture
  <dir>/understanding.jsonl           LLaVA-style {"image", "conversations"}: half open with
                                      "Describe the picture."; then 1-3 question turns
                                      (the picture after the first question)
  <dir>/text.jsonl                    {"text"}: a sentence about each picture
  <dir>/vision.jsonl                  {"image", "caption"}: each training picture with that
                                      sentence (pretraining the understanding encoder)
  <dir>/eval_vqa.jsonl                {"image", "question", "answer"} on held-out pictures
  <dir>/evaluation_metadata.jsonl     GenEval-style prompts (world.geneval_prompts)
  <dir>/tokenizer/tokenizer.json      byte-level BPE trained on all the words above, with
                                      Janus' special tokens; processor_config.json
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
from PIL import Image

from janus_jax.demo import world
from janus_jax.processor import (BOI_TOKEN, BOS_TOKEN, EOI_TOKEN, EOS_TOKEN, IMAGE_TOKEN,
                                 PAD_TOKEN, ROLES)

SPECIAL_TOKENS = ["<unk>", BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN,
                  *ROLES["pro"]]
# The demo trains and chats without a system prompt (rows stay short), and shows the
# picture after the first question, so that picture tokens can attend to the question's
# words (one attention hop from "is this the circle asked about?" to the answer, instead
# of gathering the question first and then searching the picture). In the full run it did
# not close the gap by itself (README, "The demo"). The chat CLI and generate_text read
# both settings from the checkpoint's processor_config.json.
SYSTEM_PROMPT = ""
IMAGE_POSITION = "after"
DESCRIBE = "Describe the picture."


def _write_jsonl(path: str, rows) -> int:
  tmp = path + ".tmp"
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def _save_png(image: np.ndarray, path: str) -> None:
  Image.fromarray(image).save(path)


def make_dataset(directory: str, *, train_scenes: int, eval_scenes: int, vq_scenes: int = 0,
                 captions_per_image: int = 2, questions_per_image: int = 3,
                 geneval_per_category: int = 8, seed: int = 0, progress: bool = True) -> dict:
  """Writes the raw data set (see the module docstring); returns counts."""
  from tqdm import tqdm
  rng = random.Random(seed)
  for split in ("train", "eval", "vq"):
    os.makedirs(os.path.join(directory, "images", split), exist_ok=True)
  vq_rng = random.Random(seed + 7)
  for n in range(vq_scenes):
    _save_png(world.render(world.dense_scene(vq_rng)),
              os.path.join(directory, "images", "vq", f"{n}.png"))
  t2i, und, text, vqa, pairs = [], [], [], [], []
  total = train_scenes + eval_scenes
  for n in tqdm(range(total), desc="shapes world", unit="img", disable=not progress):
    split = "train" if n < train_scenes else "eval"
    scene = world.random_scene(rng)
    name = f"images/{split}/{n}.png"
    _save_png(world.render(scene), os.path.join(directory, name))
    if split == "eval":
      vqa += [{"image": name, "question": q, "answer": a}
              for q, a in world.random_questions(scene, rng, questions_per_image)]
      continue
    for _ in range(captions_per_image):
      category, caption = world.random_caption(scene, rng)
      t2i.append({"image": name, "caption": caption, "category": category})
    # Half the conversations open with a description of the whole picture (Janus trains
    # understanding on image captions first): many answer tokens, each about one object.
    turns = []
    if rng.random() < 0.5:
      turns += [{"from": "human", "value": f"{DESCRIBE}\n<image>"},
                {"from": "gpt", "value": world.describe(scene)}]
    for q, a in world.random_questions(scene, rng, rng.randint(1, questions_per_image)):
      turns += [{"from": "human", "value": (f"{q}\n<image>" if not turns else q)},
                {"from": "gpt", "value": a}]
    und.append({"image": name, "conversations": turns})
    text.append({"text": world.describe(scene)})
    pairs.append({"image": name, "caption": world.describe(scene)})
  counts = {
      "t2i": _write_jsonl(os.path.join(directory, "t2i.jsonl"), t2i),
      "understanding": _write_jsonl(os.path.join(directory, "understanding.jsonl"), und),
      "text": _write_jsonl(os.path.join(directory, "text.jsonl"), text),
      "vision_pairs": _write_jsonl(os.path.join(directory, "vision.jsonl"), pairs),
      "eval_vqa": _write_jsonl(os.path.join(directory, "eval_vqa.jsonl"), vqa),
      "geneval": _write_jsonl(os.path.join(directory, "evaluation_metadata.jsonl"),
                              world.geneval_prompts(geneval_per_category, seed + 1)),
      "train_images": train_scenes, "eval_images": eval_scenes, "vq_images": vq_scenes,
  }
  return counts


def corpus(directory: str):
  """Every string the tokenizer must encode well: captions, conversations, texts, prompts."""
  for name, keys in (("t2i.jsonl", ("caption",)), ("text.jsonl", ("text",)),
                     ("eval_vqa.jsonl", ("question", "answer")),
                     ("evaluation_metadata.jsonl", ("prompt",))):
    with open(os.path.join(directory, name), encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        yield " ".join(row[k] for k in keys)
  with open(os.path.join(directory, "understanding.jsonl"), encoding="utf-8") as f:
    for line in f:
      yield " ".join(t["value"] for t in json.loads(line)["conversations"])


def byte_level_bpe(texts, vocab_size: int, special_tokens):
  """A byte-level BPE `tokenizers.Tokenizer` (as DeepSeek's) trained on `texts`, with
  `special_tokens` at ids 0, 1, ... in that order."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  return tokenizer


def train_tokenizer(directory: str, out: str, vocab_size: int = 384) -> dict[str, int]:
  """Trains a byte-level BPE on `corpus(directory)` and writes `out/tokenizer.json` and
  `out/processor_config.json`; returns the special-token ids (JanusConfig fields)."""
  from janus_jax.processor import SPECIAL_TOKENS as FIELDS
  tokenizer = byte_level_bpe(corpus(directory), vocab_size, SPECIAL_TOKENS)
  os.makedirs(out, exist_ok=True)
  tokenizer.save(os.path.join(out, "tokenizer.json"))
  with open(os.path.join(out, "processor_config.json"), "w") as f:
    json.dump({"role_style": "pro", "system_prompt": SYSTEM_PROMPT,
               "image_position": IMAGE_POSITION}, f, indent=2)
  ids = {field: tokenizer.token_to_id(tag) for field, tag in FIELDS.items()}
  ids["vocab_size"] = tokenizer.get_vocab_size()
  return ids
