"""python -m janus_jax.train_vision --pairs PAIRS.jsonl --model-config CONFIG.json
--tokenizer DIR --out DIR: pretrain the understanding encoder on image-text pairs.

Janus starts from a SigLIP encoder pretrained on image-text pairs (and keeps it frozen
until Stage III); a model of a new visual world has no such encoder and needs its own.
This trains the SigLIP tower of a Janus config (janus_jax.modules.siglip) from scratch the
way SigLIP was trained (Zhai et al. 2023): an image tower and a text tower map each side of
a pair to a unit vector, and every image-text combination in a batch is a binary
classification — matching or not — with the sigmoid loss

  -mean_i sum_j log sigmoid(label_ij * (t * <img_i, txt_j> + b)),   label_ij = +-1,

t and b learned (starting at 10 and -10). Pairs with the same text count as matching. The
image tower is the Janus encoder followed by SigLIP's attention-pooling head (a learned
probe attending over the patch tokens, which Janus drops: it reads the tokens); the text
tower is a small bidirectional transformer over the model's tokenizer, mean-pooled over
the text's tokens. Only the encoder is kept.

PAIRS is a JSONL of {"image": path, "caption": text} (paths relative to it; the t2i input
of `python -m janus_jax.data.prepare`). DIR is a checkpoint directory (config.json + params
{"vision": ...}, written atomically) whose encoder `init_params`-made checkpoints can take
(`janus_jax.checkpoint.load_part(DIR, "vision")`); `metrics.jsonl` beside the params has
the losses and the held-out retrieval accuracy.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from janus_jax import checkpoint as checkpoint_lib
from janus_jax import cli_common
from janus_jax import xla
from janus_jax.config import JanusConfig
from janus_jax.modules.siglip import SigLIP


@dataclasses.dataclass(frozen=True)
class VisionTrainConfig:
  steps: int = 300
  batch_size: int = 128
  learning_rate: float = 1e-3
  warmup_steps: int = 20
  weight_decay: float = 1e-4
  embed_dim: int = 128          # the shared space of the two towers
  text_width: int = 64
  text_layers: int = 2
  text_heads: int = 2
  max_text_tokens: int = 64     # longer texts are cut
  held_out: int = 256           # pairs kept apart to measure retrieval (0: none)
  seed: int = 0
  log_every: int = 25


class TextTower(nn.Module):
  """ids int [B, L], mask bool [B, L] -> [B, embed_dim]."""
  vocab_size: int
  tc: VisionTrainConfig

  @nn.compact
  def __call__(self, ids, mask):
    tc = self.tc
    x = nn.Embed(self.vocab_size, tc.text_width, name="embed")(ids)
    x = x + self.param("pos_embed", nn.initializers.normal(0.02),
                       (tc.max_text_tokens, tc.text_width))[None, :ids.shape[1]]
    attention_mask = nn.make_attention_mask(mask, mask)
    for i in range(tc.text_layers):
      h = nn.LayerNorm(name=f"norm{i}_1")(x)
      x = x + nn.MultiHeadDotProductAttention(tc.text_heads, name=f"attn{i}")(
          h, mask=attention_mask)
      h = nn.LayerNorm(name=f"norm{i}_2")(x)
      h = nn.gelu(nn.Dense(4 * tc.text_width, name=f"fc{i}_1")(h), approximate=False)
      x = x + nn.Dense(tc.text_width, name=f"fc{i}_2")(h)
    x = nn.LayerNorm(name="final_norm")(x)
    weights = mask.astype(x.dtype)[..., None]
    pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    return nn.Dense(tc.embed_dim, name="proj")(pooled)


class AttentionPool(nn.Module):
  """SigLIP's head: a learned probe attends over the tokens [B, P, W] -> [B, embed_dim]."""
  num_heads: int
  embed_dim: int

  @nn.compact
  def __call__(self, tokens):
    width = tokens.shape[-1]
    probe = self.param("probe", nn.initializers.normal(0.02), (1, 1, width))
    probe = jnp.broadcast_to(probe, (tokens.shape[0], 1, width))
    x = nn.MultiHeadDotProductAttention(self.num_heads, name="attn")(probe, tokens)[:, 0]
    return nn.Dense(self.embed_dim, name="proj")(nn.LayerNorm(name="norm")(x))


class Contrastive(nn.Module):
  """The two towers and the sigmoid loss's temperature and bias. `vision` has exactly the
  param tree of `Janus`'s understanding encoder."""
  config: JanusConfig
  tc: VisionTrainConfig

  def setup(self):
    self.vision = SigLIP(self.config.vision)
    self.image_head = AttentionPool(self.config.vision.num_heads, self.tc.embed_dim)
    self.text = TextTower(self.config.llm.vocab_size, self.tc)
    self.log_scale = self.param("log_scale", nn.initializers.constant(np.log(10.0)), ())
    self.bias = self.param("bias", nn.initializers.constant(-10.0), ())

  def __call__(self, pixels, ids, mask):
    """-> (unit image vectors [B, E], unit text vectors [B, E], scale, bias)."""
    image = self.image_head(self.vision(pixels))
    text = self.text(ids, mask)
    unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
    return unit(image), unit(text), jnp.exp(self.log_scale), self.bias


def sigmoid_loss(image, text, scale, bias, same_text):
  """SigLIP's loss over a batch: every (image i, text j) is a match iff same_text[i, j]."""
  logits = scale * image @ text.T + bias
  labels = jnp.where(same_text, 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / image.shape[0]


def tokenize(tokenizer, texts, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [N, L], mask bool [N, L]) of `texts` with a `tokenizers.Tokenizer`, cut to
  `max_tokens` and padded to the longest."""
  rows = [tokenizer.encode(t, add_special_tokens=False).ids[:max_tokens] for t in texts]
  if any(not r for r in rows):
    raise ValueError("an empty caption has no tokens; drop it from the pairs.")
  length = max(len(r) for r in rows)
  ids = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = True
  return ids, mask


def _same_rows(ids):
  return jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)


def train(images: np.ndarray, ids: np.ndarray, mask: np.ndarray, config: JanusConfig,
          tc: VisionTrainConfig, *, progress: bool = True, log=None) -> tuple[dict, list[dict]]:
  """Trains the understanding encoder of `config` on pairs: images float32 [N, S, S, 3] in
  [-1, 1] (understanding preprocessing), texts as `tokenize` gives them. The last
  `tc.held_out` pairs are not trained on; the logged `retrieval` is how often a held-out
  image's best-scoring held-out text is its own. Returns (encoder params, logged metric
  dicts)."""
  size = config.vision.image_size
  if images.ndim != 4 or images.shape[1:] != (size, size, 3):
    raise ValueError(f"expected images [N, {size}, {size}, 3], got {images.shape}.")
  if not len(images) == len(ids) == len(mask):
    raise ValueError(f"{len(images)} images but {len(ids)} texts; give one text per image.")
  held = min(tc.held_out, len(images) // 4)
  train_n = len(images) - held
  if train_n < tc.batch_size:
    raise ValueError(f"{train_n} training pairs are fewer than one batch of {tc.batch_size}; "
                     "give more pairs or a smaller batch size.")
  model = Contrastive(config.replace(dtype="float32", param_dtype="float32"), tc)
  rng = np.random.default_rng(tc.seed)
  params = xla.jit(lambda key, *batch: nn.unbox(model.init(key, *batch)["params"]),
                   once=True)(
      jax.random.PRNGKey(tc.seed), jnp.asarray(images[:2]), jnp.asarray(ids[:2]),
      jnp.asarray(mask[:2]))       # one program, not one compile per op (train_vq.train)
  schedule = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, tc.warmup_steps,
                                                max(tc.steps, tc.warmup_steps + 1),
                                                tc.learning_rate * 0.05)
  optimizer = optax.adamw(schedule, weight_decay=tc.weight_decay)
  opt_state = optimizer.init(params)

  def loss_fn(params, pixels, ids, mask):
    return sigmoid_loss(*model.apply({"params": params}, pixels, ids, mask), _same_rows(ids))

  @xla.jit
  def step(params, opt_state, pixels, ids, mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, pixels, ids, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @xla.jit
  def retrieval(params, pixels, ids, mask):
    image, text, _, _ = model.apply({"params": params}, pixels, ids, mask)
    best = jnp.argmax(image @ text.T, axis=-1)
    return jnp.mean(_same_rows(ids)[jnp.arange(len(ids)), best])

  held_batch = tuple(jnp.asarray(a[train_n:]) for a in (images, ids, mask)) if held else None
  history, interval = [], []
  from tqdm import tqdm
  bar = tqdm(range(tc.steps), desc="train vision encoder", unit="step", disable=not progress)
  start = time.perf_counter()
  try:
    for i in bar:
      pick = rng.integers(0, train_n, tc.batch_size)
      params, opt_state, loss = step(params, opt_state, jnp.asarray(images[pick]),
                                     jnp.asarray(ids[pick]), jnp.asarray(mask[pick]))
      interval.append(float(loss))
      if (i + 1) % tc.log_every == 0 or i + 1 == tc.steps:
        row = dict(step=i + 1, loss=float(np.mean(interval)),
                   seconds=time.perf_counter() - start)
        if held_batch is not None:
          row["retrieval"] = float(retrieval(params, *held_batch))
        history.append(row)
        interval = []
        bar.set_postfix(loss=f"{row['loss']:.3f}", retrieval=f"{row.get('retrieval', 0):.2f}")
        if log:
          log(f"vision step {i + 1}/{tc.steps}: loss {row['loss']:.4f} held-out retrieval "
              f"{row.get('retrieval', float('nan')):.3f}")
  finally:
    bar.close()
  return jax.device_get(params["vision"]), history


def read_pairs(path: str) -> tuple[list[str], list[str]]:
  """(image paths, captions) of a JSONL of {"image", "caption"} (paths relative to it)."""
  if not os.path.isfile(path):
    raise ValueError(f"--pairs {path} does not exist; give a JSONL of "
                     '{"image": path, "caption": text} objects.')
  root, images, captions = os.path.dirname(os.path.abspath(path)), [], []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
      except json.JSONDecodeError:
        raise ValueError(f"{path} line {n} is not JSON.") from None
      if not (isinstance(item, dict) and isinstance(item.get("image"), str)
              and isinstance(item.get("caption"), str)):
        raise ValueError(f'{path} line {n} needs an "image" path and a "caption" text.')
      images.append(os.path.join(root, item["image"]))
      captions.append(item["caption"])
  if not images:
    raise ValueError(f"{path} holds no pairs.")
  return images, captions


def load_images(paths: list[str], size: int) -> np.ndarray:
  """float32 [N, size, size, 3] in [-1, 1], preprocessed for understanding (JANUS.md §3.1)."""
  from janus_jax import train_vq
  from janus_jax.processor import preprocess_image
  return train_vq.load_images(paths, size, preprocess_image)


def save(out: str, vision_params, config: JanusConfig, history: list[dict] = (),
         overwrite: bool = False) -> None:
  """A checkpoint directory holding only the encoder (config.json + params {"vision": ...})
  and the training metrics (metrics.jsonl), written atomically."""
  checkpoint_lib.save_part(out, "vision", vision_params, config, history, overwrite)


def _parser():
  parser = argparse.ArgumentParser(prog="python -m janus_jax.train_vision",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--pairs", required=True, help='JSONL of {"image": path, "caption": text}')
  parser.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
  cli_common.add_part_training_flags(parser, VisionTrainConfig, "encoder")
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  xla.use_compilation_cache()
  try:
    config, tc = cli_common.part_training_setup(args, VisionTrainConfig)
    tokenizer_file = os.path.join(args.tokenizer, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
      raise ValueError(f"--tokenizer {args.tokenizer} holds no tokenizer.json.")
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(tokenizer_file)
    paths, captions = read_pairs(args.pairs)
    ids, mask = tokenize(tokenizer, captions, tc.max_text_tokens)
    if ids.max() >= config.llm.vocab_size:
      raise ValueError(f"the tokenizer gives ids up to {ids.max()} but the model's vocabulary "
                       f"has {config.llm.vocab_size}; use the model's own tokenizer.")
    images = load_images(paths, config.vision.image_size)
    params, history = train(images, ids, mask, config, tc, progress=not args.no_progress)
    save(args.out, params, config, history, overwrite=args.overwrite)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  last = history[-1]
  print(f"trained the understanding encoder for {tc.steps} steps on {len(images)} pairs: loss "
        f"{last['loss']:.4f}, held-out retrieval {last.get('retrieval', float('nan')):.3f}; "
        f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
