"""python -m janus_jax.train_vq --images IMAGES --model-config CONFIG.json --out DIR: train a VQ.

Trains the VQ image tokenizer of a Janus config (janus_jax.modules.vq, LlamaGen's VQ)
from scratch on a folder of images or a JSONL of {"image": path} (the t2i input of
`python -m janus_jax.data.prepare`). Released Janus models ship their VQ pretrained; a model
of a new visual world needs its own.

Losses (LlamaGen's, without the perceptual and adversarial terms): mean squared
reconstruction error + codebook loss |sg(z) - zq|^2 + commitment * |z - sg(zq)|^2, with z
the L2-normalised latents, zq their nearest (normalised) codebook rows and the
straight-through estimator into the decoder. Adam with a linear warm-up and cosine decay.
Small codebooks collapse easily when trained from scratch, so training can start as a plain
autoencoder (`--ae-steps`, the decoder sees the latents themselves), seed the codebook by
cosine k-means over the latents, and then train with quantisation; codes that no latent
chose for `--restart-every` steps are re-seeded from latents of the batch (not in the last
fifth of training). A caller may pass a check of the params (`train(until=...)`, as the demo
does with its detector): while it fails, training goes on at the final rate, up to a cap.

DIR is a checkpoint directory (config.json + params {"vq": ...}, written atomically) that
`prepare --vq-checkpoint DIR` reads; `metrics.jsonl` beside the params has the losses.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from janus_jax import checkpoint as checkpoint_lib
from janus_jax import cli_common
from janus_jax import xla
from janus_jax.config import JanusConfig
from janus_jax.modules.vq import VQModel

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass(frozen=True)
class VQTrainConfig:
  steps: int = 1000
  ae_steps: int = 0             # autoencoder warm-up steps (no quantisation) before `steps`
  batch_size: int = 32
  learning_rate: float = 2e-3
  warmup_steps: int = 20
  commitment: float = 0.25
  codebook_weight: float = 1.0
  restart_every: int = 25       # re-seed codes unused over this many steps (0: never)
  seed: int = 0
  log_every: int = 25


def image_paths(source: str) -> list[str]:
  """The image files of a folder, or the "image" paths of a JSONL (relative to it)."""
  if os.path.isdir(source):
    paths = sorted(p for p in glob.glob(os.path.join(source, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS))
  elif os.path.isfile(source):
    root, paths = os.path.dirname(os.path.abspath(source)), []
    with open(source, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          item = json.loads(line)
        except json.JSONDecodeError:
          raise ValueError(f"{source} line {n} is not JSON; give a JSONL of "
                           '{"image": path} objects or a folder of images.') from None
        path = item.get("image") if isinstance(item, dict) else None
        if not isinstance(path, str):
          raise ValueError(f'{source} line {n} has no "image" path.')
        paths.append(os.path.join(root, path))
    paths = list(dict.fromkeys(paths))     # several captions may share one image
  else:
    raise ValueError(f"--images {source} does not exist; give a folder of images or a JSONL.")
  if not paths:
    raise ValueError(f"no images found in {source}.")
  return paths


def load_images(paths: list[str], size: int, preprocess=None) -> np.ndarray:
  """float32 [N, size, size, 3] in [-1, 1], preprocessed as for generation (JANUS.md §3.1)
  or by `preprocess(path, size)` (e.g. `processor.preprocess_image`, for understanding)."""
  from janus_jax.processor import preprocess_generation_image
  preprocess = preprocess or preprocess_generation_image
  out = np.empty((len(paths), size, size, 3), np.float32)
  for i, path in enumerate(paths):
    try:
      out[i] = preprocess(path, size)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read image {path}: {e}") from None
  return out


def make_step(model: VQModel, optimizer, tc: VQTrainConfig):
  """The jitted step (params, opt_state, pixels, quantize) -> (params, opt_state, metrics);
  quantize is an argument, not a constant, so the autoencoder warm-up and the quantised
  steps are one compiled program (compiling the step takes ~5 s on a 2-core host)."""
  def loss_fn(params, pixels, quantize):
    decoded, z, zq, codes = model.apply({"params": params}, pixels, quantize,
                                        method=VQModel.train_forward)
    recon = jnp.mean(jnp.square(decoded - pixels))
    codebook = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(z) - zq), -1))
    commit = jnp.mean(jnp.sum(jnp.square(z - jax.lax.stop_gradient(zq)), -1))
    loss = recon + jnp.where(quantize, tc.codebook_weight * codebook + tc.commitment * commit,
                             0.0)
    return loss, dict(loss=loss, recon=recon, codebook=codebook, commitment=commit,
                      codes=codes, z=z)

  @xla.jit
  def step(params, opt_state, pixels, quantize):
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, pixels, quantize)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, aux
  return step


def _restart_unused(params, used: np.ndarray, latents: np.ndarray, rng: np.random.Generator):
  """Codebook rows never used -> random latents of the last batch (direction only)."""
  dead = np.nonzero(~used)[0]
  if not len(dead):
    return params, 0
  flat = latents.reshape(-1, latents.shape[-1])
  table = np.array(params["quantize"]["embedding"])
  table[dead] = flat[rng.integers(0, len(flat), len(dead))]
  return _with_codebook(params, table), len(dead)


def _with_codebook(params, table: np.ndarray):
  params = dict(params)
  params["quantize"] = {"embedding": jnp.asarray(table, jnp.float32)}
  return params


def spherical_kmeans(points: np.ndarray, k: int, rng: np.random.Generator,
                     iterations: int = 20) -> np.ndarray:
  """k unit centroids [k, d] of unit vectors [n, d] (cosine k-means, k-means++ seeding;
  empty clusters are re-seeded from the points farthest from their centroid)."""
  points = points / np.maximum(np.linalg.norm(points, axis=-1, keepdims=True), 1e-12)
  centroids = np.empty((k, points.shape[-1]), points.dtype)
  centroids[0] = points[rng.integers(len(points))]
  distance = 1.0 - points @ centroids[0]
  for j in range(1, k):
    weights = np.maximum(distance, 0.0)
    total = weights.sum()
    pick = rng.choice(len(points), p=weights / total) if total > 0 else rng.integers(len(points))
    centroids[j] = points[pick]
    distance = np.minimum(distance, 1.0 - points @ centroids[j])
  for _ in range(iterations):
    similarity = points @ centroids.T
    assign = similarity.argmax(-1)
    fit = similarity[np.arange(len(points)), assign]
    order = np.argsort(fit)                   # worst-fitted first
    spare = 0
    for j in range(k):
      members = points[assign == j]
      if len(members):
        mean = members.sum(0)
        centroids[j] = mean / max(np.linalg.norm(mean), 1e-12)
      else:
        centroids[j] = points[order[spare % len(points)]]
        spare += 1
  return centroids


def train(images: np.ndarray, config: JanusConfig, tc: VQTrainConfig, *, progress: bool = True,
          log=None, until=None, extra_steps: int = 0,
          check_every: int = 25) -> tuple[dict, list[dict]]:
  """Trains the VQ of `config` on images float32 [N, S, S, 3] in [-1, 1]: `ae_steps` as an
  autoencoder, then the codebook seeded by k-means over the latents, then `steps` with
  quantisation. Returns (VQ params, logged metric dicts).

  until: a check of the params (e.g. "reconstructions read back right"); while it fails
  after the planned steps, training goes on with quantisation at the schedule's final rate,
  `check_every` steps at a time, up to `extra_steps` more (no codes re-seeded there).
  """
  size = config.vq.image_size
  if images.ndim != 4 or images.shape[1:] != (size, size, 3):
    raise ValueError(f"expected images [N, {size}, {size}, 3], got {images.shape}.")
  import flax.linen as nn
  model = VQModel(config.vq)
  rng = np.random.default_rng(tc.seed)
  # one program (flax's init run op by op compiles every op apart: ~10 s for the demo VQ)
  params = xla.jit(lambda key, x: nn.unbox(model.init(key, x)["params"]), once=True)(
      jax.random.PRNGKey(tc.seed), jnp.asarray(images[:1]))
  total = tc.ae_steps + tc.steps
  schedule = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, tc.warmup_steps,
                                                max(total, tc.warmup_steps + 1),
                                                tc.learning_rate * 0.05)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)
  step = make_step(model, optimizer, tc)
  used = np.zeros(config.vq.codebook_size, bool)
  history, interval = [], []
  from tqdm import tqdm
  bar = tqdm(total=total, desc="train VQ", unit="step", disable=not progress)
  start = time.perf_counter()
  limit, i = total, 0
  try:
    while i < limit:
      quantize = i >= tc.ae_steps
      if quantize and i == tc.ae_steps and tc.ae_steps:
        params = _with_codebook(params, spherical_kmeans(
            _latents(model, params, images, rng), config.vq.codebook_size, rng))
      batch = images[rng.integers(0, len(images), tc.batch_size)]
      params, opt_state, aux = step(params, opt_state, jnp.asarray(batch),
                                    jnp.asarray(quantize))
      interval.append({k: float(aux[k]) for k in ("loss", "recon", "codebook", "commitment")})
      codes = np.asarray(aux["codes"])
      if quantize:
        used[codes.reshape(-1)] = True
        if (tc.restart_every and (i + 1 - tc.ae_steps) % tc.restart_every == 0
            and i + 1 < total - tc.steps * 0.2):
          params, _ = _restart_unused(params, used, np.asarray(aux["z"]), rng)
          used[:] = False
      if (i + 1) % tc.log_every == 0 or i + 1 == limit:
        row = {k: float(np.mean([m[k] for m in interval])) for k in interval[0]}
        row.update(step=i + 1, phase="vq" if quantize else "autoencoder",
                   codes_used=int(len(np.unique(codes))), seconds=time.perf_counter() - start)
        history.append(row)
        interval = []
        bar.set_postfix(recon=f"{row['recon']:.4f}", codes=row["codes_used"])
        if log:
          log(f"vq step {i + 1}/{limit} ({row['phase']}): recon {row['recon']:.5f} codebook "
              f"{row['codebook']:.4f} commitment {row['commitment']:.4f} "
              f"codes in batch {row['codes_used']}")
      i += 1
      bar.update()
      if (i == limit and until is not None and limit < total + extra_steps
          and not until(jax.device_get(params))):
        limit = min(limit + check_every, total + extra_steps)
        bar.total = limit
        bar.refresh()
        if log:
          log(f"vq step {i}: the check failed; {limit - i} more quantised steps")
  finally:
    bar.close()
  return jax.device_get(params), history


def _latents(model, params, images, rng, count: int = 512) -> np.ndarray:
  """L2-normalised latents [n * g * g, d] of up to `count` random images."""
  pick = images[rng.choice(len(images), min(count, len(images)), replace=False)]
  fn = xla.jit(lambda p, x: model.apply({"params": p}, x, method=VQModel.encode_latents))
  z = np.concatenate([np.asarray(fn(params, jnp.asarray(pick[i:i + 64])))
                      for i in range(0, len(pick), 64)])
  return z.reshape(-1, z.shape[-1])


def save(out: str, vq_params, config: JanusConfig, history: list[dict] = (),
         overwrite: bool = False) -> None:
  """A checkpoint directory holding only the VQ (config.json + params {"vq": ...}) and the
  training metrics (metrics.jsonl), written atomically."""
  checkpoint_lib.save_part(out, "vq", vq_params, config, history, overwrite)


@functools.lru_cache(maxsize=8)
def _reconstruct_program(vq_config):
  """The jitted pixels -> (codes, decoded) of a VQ config, built once per config (the demo
  checks reconstructions several times while its VQ trains)."""
  model = VQModel(vq_config)

  @xla.jit
  def fn(params, x):
    codes = model.apply({"params": params}, x, method=VQModel.encode)
    return codes, model.apply({"params": params}, codes, method=VQModel.decode)
  return fn


def reconstruct(vq_params, config: JanusConfig, images: np.ndarray,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(codes int32 [N, g*g], uint8 reconstructions [N, S, S, 3]) of float images."""
  fn = _reconstruct_program(config.vq)
  codes, pixels = [], []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    c, x = fn(vq_params, jnp.asarray(np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])))
    codes.append(np.asarray(c)[:len(chunk)])
    pixels.append(np.asarray(x)[:len(chunk)])
  pixels = np.concatenate(pixels)
  # The reference's conversion of decoded pixels to uint8 (JANUS.md §4.3).
  return np.concatenate(codes), np.clip((pixels + 1) / 2 * 255, 0, 255).astype(np.uint8)


def _parser():
  parser = argparse.ArgumentParser(prog="python -m janus_jax.train_vq",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--images", required=True, help="folder of images or JSONL of {'image': path}")
  cli_common.add_part_training_flags(parser, VQTrainConfig, "VQ")
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  xla.use_compilation_cache()
  try:
    config, tc = cli_common.part_training_setup(args, VQTrainConfig)
    images = load_images(image_paths(args.images), config.vq.image_size)
    params, history = train(images, config, tc, progress=not args.no_progress)
    save(args.out, params, config, history, overwrite=args.overwrite)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  last = history[-1]
  print(f"trained the VQ for {tc.steps} steps on {len(images)} images: reconstruction MSE "
        f"{last['recon']:.5f}; wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
