"""Compiled sampling loops: text-to-image with classifier-free guidance, and visual chat.

Each batch runs as ONE jitted program: the prompt prefill and every decode step (a
`lax.scan` over image tokens, a `lax.while_loop` that stops when every answer has
ended) with a preallocated KV cache. Prompt lengths are padded to buckets, so a new
prompt length rarely means a new compilation. Randomness is keyed per image / per
answer (`fold_in(seed, global index)` then the step), so a sample does not depend on
what else shares its batch.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
import weakref
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from janus_jax import sharding as sharding_lib
from janus_jax import xla
from janus_jax.config import JanusConfig
from janus_jax.modules.janus import Janus
from janus_jax.modules.layers import gelu
from janus_jax.modules import llm as llm_lib

BUCKET = 32   # prompt lengths are padded up to a multiple of this


def bucket_length(n: int, multiple: int = BUCKET) -> int:
  return max(multiple, -(-n // multiple) * multiple)


# --- token selection -------------------------------------------------------------------------
def select_tokens(logits, keys, temperature, top_p, *, top_k: int | None, greedy: bool):
  """Picks one token per row. logits [R, V] float32; keys [R] PRNG keys -> int32 [R].

  greedy: argmax. Otherwise logits / temperature, optionally restricted to the top_k
  tokens and to the smallest set whose probability reaches top_p, then sampled.
  """
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token while the mass before it is below top_p (the first always stays).
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _step_keys(keys, step):
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)


# The token progress bar of the running generation; the compiled loops report to it
# through one fixed callback (a fresh closure per call would defeat the program cache).
_ACTIVE_BAR: list = [None]
_REPORT_EVERY = 16


def _report_progress(step):
  bar = _ACTIVE_BAR[0]
  step = int(step)
  if bar is not None and (step % _REPORT_EVERY == 0 or step == bar.total):
    bar.n = step
    bar.refresh()


_COMPILED: dict = {}


def _compiled(program, key, *args):
  """AOT-compiles the decode `program` for these arguments once (so compile time is
  measured apart), with xla.compiler_options(decode=True)."""
  if key not in _COMPILED:
    _COMPILED[key] = program.lower(*args).compile(xla.compiler_options(decode=True) or None)
  return _COMPILED[key]


UNROLLED_DECODE: bool | None = None   # None: decide by backend (unrolled_decode_default)


def unrolled_decode_default() -> bool:
  """Whether decoding runs the LLM layer by layer (UNROLLED_DECODE, else on CPU backends).

  XLA:CPU copies each layer's weights and cache slab out of the stacked arrays when the
  layers are a loop; unrolled over per-layer arrays a decode step reads each byte once, at
  the price of a second copy of the layer weights (`decode_weights`, kept while the params
  live) and a longer compilation. Other backends keep the layer loop.
  """
  if UNROLLED_DECODE is not None:
    return UNROLLED_DECODE
  return jax.default_backend() == "cpu"


def _decode_form(config: JanusConfig, mesh) -> tuple[int, int]:
  """How the decode loop runs the LLM: (groups, parts).

  groups 0: the scanned layer stack. groups >= 1: layer by layer (`llm.decode_layers`), each
  layer's kv heads in `groups` cache groups and, with parts >= 1, each layer cut into `groups`
  independent chains (`llm.split_layers`) and the output head's matrices into `parts` blocks:
  work that XLA:CPU runs on different cores (`parts` = the cores, up to 8). On a mesh:
  (1, 0), the plain layer params, whose kv heads and columns follow the tensor axis.
  """
  if not unrolled_decode_default():
    return 0, 0
  if mesh is not None:
    return 1, 0
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  cores = max(1, min(cores or 1, 8))
  heads = config.llm.num_kv_heads
  return max(g for g in range(1, min(cores, heads) + 1) if heads % g == 0), cores


def _decode_weights(params, config: JanusConfig, form, head: str) -> dict:
  """The weights `_Trunk` decodes with, derived from params for its form: {"layers": the
  layers cut per `split_layers` (None for the scanned stack), "head": the output head's
  kernels transposed into row blocks (None where the plain head serves)}."""
  groups, parts = form or (0, 0)
  parts = parts if groups else 0
  layers = (llm_lib.split_layers(params["llm"]["layers"], config.llm, groups if parts else 0)
            if groups else None)
  # Kernels transposed ([out, in]) for `llm.matmul`, cut into `parts` row blocks.
  split = lambda w: llm_lib.split_rows(w.T, parts)
  if head == "gen":
    # MlpProjector fc2(gelu(fc1(x))) as chains: a block of fc1's columns, gelu, the same
    # block of fc2's rows; the chains' products are summed (one chain without `parts`).
    fc1, fc2 = params["gen_head"]["fc1"], params["gen_head"]["fc2"]
    head_params = (split(fc1["kernel"]), llm_lib.split_rows(fc1["bias"], parts),
                   tuple(w.T for w in llm_lib.split_rows(fc2["kernel"], parts)), fc2["bias"])
  else:
    head_params = split(params["llm"]["lm_head"]["kernel"]) if parts else None
  return {"layers": layers, "head": head_params}


CACHE_DECODE_WEIGHTS = True   # keep each params' decode weights between calls (see below)
_DECODE_WEIGHTS: dict = {}


@functools.lru_cache(maxsize=16)
def _decode_weights_program(config: JanusConfig, form, head: str):
  return xla.jit(functools.partial(_decode_weights, config=config, form=form, head=head))


def decode_weights(params, config: JanusConfig, form, head: str) -> dict | None:
  """`_decode_weights` computed by its own compiled program, and kept while the arrays it
  came from live (a `weakref.finalize` on each drops the entry), so repeated calls on
  the same params skip the copy. For the mid-size model on the Zen 3 that copy was about
  a second of every chat call (ad-hoc script, batch 1: first token 2.66 s with the copy
  in the call, 1.55 s with it kept). It holds a second copy of the LLM layers (and of the head
  kernels) while it lives; set CACHE_DECODE_WEIGHTS = False to derive them per call.
  """
  if not (form or (0, 0))[0]:
    return None   # the scanned stack: its few derived head weights stay in the program
  sources = [params["llm"]["layers"],
             params["gen_head"] if head == "gen" else params["llm"]["lm_head"]]
  leaves = jax.tree.leaves(sources)
  key = (config, tuple(form), head, tuple(id(a) for a in leaves))
  if key in _DECODE_WEIGHTS:
    return _DECODE_WEIGHTS[key]
  weights = _decode_weights_program(config, tuple(form), head)(params)
  if CACHE_DECODE_WEIGHTS:
    try:
      for leaf in leaves:   # an id can only be reused after its array is gone
        weakref.finalize(leaf, _DECODE_WEIGHTS.pop, key, None)
    except TypeError:       # leaves that take no weak reference: not kept
      return weights
    _DECODE_WEIGHTS[key] = weights
  return weights


def _timed_decode_weights(p, form, head: str, timings: dict):
  """decode_weights for p, its time (derivation and compile; ~0 when kept) added to
  timings["prepare_s"]."""
  start = time.perf_counter()
  weights = jax.block_until_ready(decode_weights(p.params, p.config, form, head))
  timings["prepare_s"] = timings.get("prepare_s", 0.0) + time.perf_counter() - start
  return weights


class _Trunk:
  """The LLM decoder over a preallocated KV cache and one output head, in the form
  `_decode_form` chose, with the weights `decode_weights` derived for that form (None:
  derived here, in the program).

  head: "gen" (image-code logits) or "text" (lm_head logits).
  """

  def __init__(self, model: Janus, params, weights, form, head: str):
    self.model, self.params = model, params
    self.groups, self.parts = form or (0, 0)   # a false form (0, False): the layer stack
    self.unrolled = self.groups > 0
    self.cfg = model.config
    self.dtype = jnp.dtype(self.cfg.dtype)
    self.head = head
    if weights is None:
      weights = _decode_weights(params, self.cfg, form, head)
    self.layers, self.head_params = weights["layers"], weights["head"]

  def init_cache(self, batch: int, length: int):
    """An empty cache, rows following the batch sharding and kv heads the tensor axis."""
    if self.unrolled:
      spec = llm_lib.CACHE_AXES[1:]
      caches = llm_lib.init_layer_caches(self.cfg.llm, batch, length, self.dtype, self.groups)
      return jax.tree.map(lambda a: nn.with_logical_constraint(a, spec), caches)
    return self._stack_cache(batch, length)

  def _stack_cache(self, batch: int, length: int):
    """An empty cache of the scanned layer stack ([L, B, K, S, H]), sharding-constrained."""
    cache = llm_lib.init_cache(self.cfg.llm, batch, length, self.dtype)
    return {k: nn.with_logical_constraint(v, llm_lib.CACHE_AXES) for k, v in cache.items()}

  def grow_cache(self, cache, length: int):
    """The cache with its slots axis zero-padded to `length` (a copy, between loops)."""
    def grow(a):
      axis = a.ndim - 2                      # [..., S, H]
      pad = [(0, 0)] * a.ndim
      pad[axis] = (0, length - a.shape[axis])
      return a if length == a.shape[axis] else jnp.pad(a, pad)
    return jax.tree.map(grow, cache)

  def prefill(self, embeds, positions, key_mask, length: int):
    """The prompt into a new cache of `length` slots -> (final-normed hidden [B, T, D],
    cache in this trunk's form).

    The chained form runs the prompt through the scanned layer stack and cuts its cache
    into the per-layer head groups: with hundreds of rows, chaining each layer's products
    costs more than it saves (a chat prompt with one image, Zen 3: 3.7 s chained against
    1.9 s as the stack). Only the token steps, a few rows each, take the chained layers.
    """
    batch = embeds.shape[0]
    if not (self.unrolled and self.parts):
      return self(embeds, positions, key_mask, self.init_cache(batch, length), 0)
    hidden, stack = self.model.apply({"params": self.params}, embeds, positions, key_mask,
                                     self._stack_cache(batch, length), 0, method=Janus.decode)
    width = self.cfg.llm.num_kv_heads // self.groups
    spec = llm_lib.CACHE_AXES[1:]
    cut = lambda a, layer, g: nn.with_logical_constraint(
        a[layer, :, g * width:(g + 1) * width], spec)
    cache = [tuple((cut(stack["k"], layer, g), cut(stack["v"], layer, g))
                   for g in range(self.groups)) for layer in range(self.cfg.llm.num_layers)]
    return hidden, cache

  def __call__(self, embeds, positions, key_mask, cache, cache_index):
    """-> (final-normed hidden [B, T, D], updated cache); see `LLM.__call__`."""
    if self.unrolled:
      return llm_lib.decode_layers(self.cfg.llm, self.layers, self.params["llm"]["final_norm"],
                                   embeds, positions, key_mask, cache, cache_index, self.dtype,
                                   jnp.dtype(self.cfg.param_dtype))
    return self.model.apply({"params": self.params}, embeds, positions, key_mask, cache,
                            cache_index, method=Janus.decode)

  def logits(self, hidden):
    """Final-normed hidden [..., D] -> float32 text logits (the "text" head; the "gen" head
    goes through guided_logits)."""
    if not (self.unrolled and self.parts):
      return self.apply(Janus.text_logits, hidden)
    return llm_lib.matmul_parts(hidden, self.head_params, self.dtype).astype(jnp.float32)

  def guided_logits(self, hidden, cfg_weight):
    """Guided image-code logits: hidden [2B, D] holds the conditional rows then the
    unconditional ones; the result [B, V] float32 is uncond + w * (cond - uncond).

    fc2 is linear, so the guidance is applied to gelu(fc1(x)) and fc2 runs on B rows
    instead of 2B: the same logits up to rounding, for half the largest product.
    """
    fc1, b1, fc2, b2 = self.head_params
    mm = lambda a, w: llm_lib.matmul(a, w, self.dtype)
    out = []
    for w1, c1, w2 in zip(fc1, b1, fc2):
      g = gelu(mm(hidden, w1) + c1.astype(self.dtype))
      cond, free = jnp.split(g.astype(jnp.float32), 2, axis=0)   # mixed in float32
      out.append(mm(free + cfg_weight * (cond - free), w2))
    return (sum(out[1:], out[0]) + b2.astype(self.dtype)).astype(jnp.float32)

  def apply(self, method, *args):
    return self.model.apply({"params": self.params}, *args, method=method)


# --- image generation --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ImageStatic:
  config: JanusConfig
  top_k: int | None
  greedy: bool
  progress: bool   # report decoded tokens to the active progress bar
  decode_form: Any   # (groups, parts) from _decode_form; false: the scanned layer stack
  # The token loop in this many segments, each attending only to the cache slots written so
  # far (the cache grows between segments), instead of the whole preallocated length.
  window_segments: int = 1


WINDOW_SEGMENTS = 8   # image-token loop segments in the layer-by-layer (CPU) form, at most
# Each segment is its own copy of the token step in the program, so compile time grows with
# their number, while what one saves (reading cache slots beyond its window) only pays off
# over many steps: at least this many per segment. The demo's model (36 image tokens) compiled
# its image program in 6.05 s with 8 segments and in 1.76 s with 1 (and generated in 0.33
# against 0.49 s); Janus' 576 tokens keep all 8.
SEGMENT_MIN_STEPS = 32


def window_segments(num_tokens: int, unrolled: bool) -> int:
  """The image-token loop's segment count: 1 for the scanned layer stack, else up to
  WINDOW_SEGMENTS of at least SEGMENT_MIN_STEPS steps."""
  if not unrolled:
    return 1
  return max(1, min(WINDOW_SEGMENTS, (num_tokens - 1) // SEGMENT_MIN_STEPS))


def _segments(num_tokens: int, count: int) -> list[tuple[int, int]]:
  """Steps 1 .. num_tokens - 1 in `count` contiguous [start, stop) ranges (non-empty)."""
  bounds = sorted({1 + round(j * (num_tokens - 1) / count) for j in range(count + 1)})
  return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


@functools.lru_cache(maxsize=32)
def _image_program(static: _ImageStatic):
  cfg = static.config
  model = Janus(cfg)
  num_tokens = cfg.vq.num_tokens

  def run(params, weights, ids, mask, positions, keys, cfg_weight, temperature, top_p):
    """ids/mask/positions [B, L] (left-padded prompts ending in <begin_of_image>);
    keys [B]; weights from `decode_weights` -> image codes int32 [B, num_tokens]."""
    b, length = ids.shape
    # Rows [0, B) are conditional, [B, 2B) unconditional: BOS and <begin_of_image> kept,
    # every other token replaced by pad (JANUS.md §4.1, §4.3).
    keep = (ids == cfg.bos_token_id) | (ids == cfg.boi_token_id)
    uncond = jnp.where(keep, ids, cfg.pad_token_id)
    all_ids = jnp.concatenate([ids, uncond])
    all_pos = jnp.concatenate([positions, positions])
    key_mask = jnp.concatenate([jnp.concatenate([mask, mask]),
                                jnp.ones((2 * b, num_tokens), mask.dtype)], axis=1)
    trunk = _Trunk(model, params, weights, static.decode_form, "gen")
    # Step i writes slot length + i - 1 and attends to the slots before it; a segment of
    # steps [start, stop) needs slots [0, length + stop - 1).
    segments = _segments(num_tokens, static.window_segments if trunk.unrolled else 1)
    limit = length + segments[0][1] - 1 if segments else length

    def pick(hidden, step):       # hidden [2B, D] -> next codes [B]
      return select_tokens(trunk.guided_logits(hidden, cfg_weight), _step_keys(keys, step),
                           temperature, top_p, top_k=static.top_k, greedy=static.greedy)

    hidden, cache = trunk.prefill(trunk.apply(Janus.embed, all_ids), all_pos,
                                  key_mask[:, :limit], limit)
    token = pick(hidden[:, -1], 0)
    last_pos = all_pos[:, -1:]
    out = [token[:, None]]

    def body(key_mask, carry, i):
      token, cache = carry
      embeds = trunk.apply(Janus.gen_embeds, jnp.concatenate([token, token])[:, None])
      hidden, cache = trunk(embeds, last_pos + i, key_mask, cache, length + i - 1)
      token = pick(hidden[:, 0], i)
      if static.progress:
        jax.debug.callback(_report_progress, i + 1)
      return (token, cache), token

    for start, stop in segments:
      cache = trunk.grow_cache(cache, length + stop - 1)
      (token, cache), rest = jax.lax.scan(
          functools.partial(body, key_mask[:, :length + stop - 1]), (token, cache),
          jnp.arange(start, stop))
      out.append(rest.T)
    return jnp.concatenate(out, axis=1)

  return jax.jit(run)


@functools.lru_cache(maxsize=8)
def _vq_decode_program(config: JanusConfig):
  model = Janus(config)

  def run(params, codes):
    images = model.apply({"params": params}, codes, method=Janus.decode_codes)
    # The reference's conversion: clip((x + 1) / 2 * 255, 0, 255), truncated to uint8.
    return jnp.clip((images + 1) / 2 * 255, 0, 255).astype(jnp.uint8)

  return xla.jit(run)


def _mesh_rows(mesh) -> int:
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def _put(mesh, *arrays):
  if mesh is None:
    return [jnp.asarray(a) for a in arrays]
  return [jax.device_put(a, sharding_lib.batch_sharding(mesh, np.ndim(a))) for a in arrays]


def _image_keys(seed: int, indices: Sequence[int]):
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def generate_image_codes(p, prompts: Sequence[str], *, num_images: int = 1,
                         cfg_weight: float = 5.0, temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                         batch_size: int | None = None, mesh=None, progress: bool = False,
                         timings: dict | None = None) -> np.ndarray:
  """Text -> VQ codes int32 [len(prompts) * num_images, h*w] (prompt-major order).

  Greedy selection when top_k == 1 or temperature == 0. batch_size: images per compiled
  batch (default: all); the last batch is padded, so every batch has the same shape.
  """
  _check_generation_args(p, prompts, num_images, temperature, top_k, top_p)
  cfg = p.config
  rows = [(i, n) for i in range(len(prompts)) for n in range(num_images)]
  batch_size = min(batch_size or len(rows), len(rows))
  multiple = _mesh_rows(mesh)
  batch_size = -(-batch_size // multiple) * multiple
  encoded = p.processor.generation_batch(list(prompts))
  max_length = cfg.llm.max_position_embeddings - cfg.vq.num_tokens
  length = bucket_length(encoded["input_ids"].shape[1])
  if encoded["attention_mask"].sum(1).max() > max_length:
    raise ValueError(f"prompt of {int(encoded['attention_mask'].sum(1).max())} tokens leaves no "
                     f"room for {cfg.vq.num_tokens} image tokens in the context of "
                     f"{cfg.llm.max_position_embeddings}; shorten it.")
  encoded = p.processor.generation_batch(list(prompts), pad_to=length)
  greedy = top_k == 1 or temperature == 0
  from tqdm import tqdm
  batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
  token_bar = tqdm(total=cfg.vq.num_tokens, desc="image tokens", unit="tok", leave=False,
                   disable=not progress)
  form = _decode_form(cfg, mesh)
  static = _ImageStatic(cfg, None if greedy else top_k, greedy, progress, form,
                        window_segments(cfg.vq.num_tokens, bool(form[0])))
  program = _image_program(static)
  scalars = [jnp.float32(cfg_weight), jnp.float32(temperature),
             jnp.float32(1.0 if top_p is None else top_p)]
  out = []
  timings = {} if timings is None else timings
  timings.setdefault("compile_s", 0.0)
  timings.setdefault("generate_s", 0.0)
  context = sharding_lib.use_mesh(mesh) if mesh is not None else _null()
  _ACTIVE_BAR[0] = token_bar if progress else None
  with context:
    weights = _timed_decode_weights(p, form, "gen", timings)
    for batch in tqdm(batches, desc="image batches", unit="batch", disable=not progress):
      padded = batch + [batch[-1]] * (batch_size - len(batch))
      prompt_rows = [i for i, _ in padded]
      ids, mask, pos = (encoded[k][prompt_rows] for k in ("input_ids", "attention_mask", "positions"))
      keys = _image_keys(seed, [i * num_images + n for i, n in padded])
      args = [p.params, weights] + _put(mesh, ids, mask, pos) + [keys] + scalars
      start = time.perf_counter()
      compiled = _compiled(program, (static, ids.shape, id(mesh)), *args)
      timings["compile_s"] += time.perf_counter() - start
      start = time.perf_counter()
      token_bar.reset()
      codes = np.asarray(compiled(*args))[:len(batch)]
      timings["generate_s"] += time.perf_counter() - start
      out.append(codes)
  _ACTIVE_BAR[0] = None
  token_bar.close()
  return np.concatenate(out)


def decode_images(p, codes: np.ndarray, batch_size: int = 8) -> np.ndarray:
  """VQ codes [N, h*w] -> uint8 images [N, H, W, 3] (the reference's conversion)."""
  program = _vq_decode_program(p.config)
  batch_size = max(1, min(batch_size, len(codes)))   # one image is not decoded as eight
  out = []
  for i in range(0, len(codes), batch_size):
    chunk = codes[i:i + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    out.append(np.asarray(program(p.params, jnp.asarray(padded)))[:len(chunk)])
  return np.concatenate(out)


def generate_images(p, prompts: Sequence[str], *, num_images: int = 1, cfg_weight: float = 5.0,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, seed: int = 0, batch_size: int | None = None,
                    mesh=None, progress: bool = False, timings: dict | None = None) -> np.ndarray:
  """Text -> uint8 images [len(prompts) * num_images, H, W, 3], prompt-major order.

  p: what `janus_jax.load` returns (needs its processor). cfg_weight: w in
  uncond + w * (cond - uncond). top_k=1 (or temperature=0) selects greedily.
  """
  codes = generate_image_codes(p, prompts, num_images=num_images, cfg_weight=cfg_weight,
                               temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                               batch_size=batch_size, mesh=mesh, progress=progress,
                               timings=timings)
  return decode_images(p, codes)


def _check_generation_args(p, prompts, num_images, temperature, top_k, top_p):
  if p.processor is None:
    raise ValueError("this checkpoint has no tokenizer files (tokenizer.json); copy them into "
                     "the checkpoint directory to generate from text.")
  if isinstance(prompts, str):
    raise ValueError("prompts must be a list of strings, not one string.")
  if not prompts:
    raise ValueError("no prompts given.")
  if num_images < 1:
    raise ValueError(f"num_images must be at least 1, got {num_images}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}.")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


# --- visual chat -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _TextStatic:
  config: JanusConfig
  max_new_tokens: int
  greedy: bool
  decode_form: Any   # (groups, parts) from _decode_form; false: the scanned layer stack


@functools.lru_cache(maxsize=32)
def _text_program(static: _TextStatic):
  cfg = static.config
  model = Janus(cfg)
  new = static.max_new_tokens

  def run(params, weights, ids, mask, positions, pixel_values, keys, temperature, top_p):
    """ids/mask/positions [B, L]; pixel_values [B, N, S, S, 3] -> (tokens int32 [B, new],
    steps run). Finished rows are filled with pad after their EOS."""
    b, length = ids.shape
    key_mask = jnp.concatenate([mask, jnp.ones((b, new), mask.dtype)], axis=1)
    trunk = _Trunk(model, params, weights, static.decode_form, "text")

    def pick(logits, step):
      return select_tokens(logits, _step_keys(keys, step), temperature, top_p, top_k=None,
                           greedy=static.greedy)

    embeds = trunk.apply(Janus.embed, ids, pixel_values)
    hidden, cache = trunk.prefill(embeds, positions, key_mask, length + new)
    token = pick(trunk.logits(hidden[:, -1]), 0)
    tokens = jnp.full((b, new), cfg.pad_token_id, jnp.int32).at[:, 0].set(token)
    done = token == cfg.eos_token_id
    last_pos = positions[:, -1:]

    def cond(state):
      i, _, _, _, done = state
      return (i < new) & ~jnp.all(done)

    def body(state):
      i, token, cache, tokens, done = state
      hidden, cache = trunk(trunk.apply(Janus.embed, token[:, None]), last_pos + i, key_mask,
                            cache, length + i - 1)
      token = jnp.where(done, cfg.pad_token_id, pick(trunk.logits(hidden[:, 0]), i))
      tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
      return i + 1, token, cache, tokens, done | (token == cfg.eos_token_id)

    steps, _, _, tokens, _ = jax.lax.while_loop(cond, body, (1, token, cache, tokens, done))
    return tokens, steps

  return jax.jit(run)


def generate_text_tokens(p, questions: Sequence, images: Sequence, *, max_new_tokens: int = 512,
                         temperature: float = 0.0, top_p: float | None = None, seed: int = 0,
                         mesh=None, timings: dict | None = None) -> np.ndarray:
  """Answers as token ids int32 [B, max_new_tokens] (pad after EOS). See generate_text."""
  if p.processor is None:
    raise ValueError("this checkpoint has no tokenizer files (tokenizer.json); copy them into "
                     "the checkpoint directory to chat.")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  cfg = p.config
  batch = p.processor.understanding_batch(list(questions), list(images))
  longest = batch["input_ids"].shape[1]
  if longest + max_new_tokens > cfg.llm.max_position_embeddings:
    raise ValueError(f"prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the "
                     f"context of {cfg.llm.max_position_embeddings}; shorten it.")
  batch = p.processor.understanding_batch(list(questions), list(images),
                                          pad_to=bucket_length(longest))
  rows = len(questions)
  padded_rows = -(-rows // _mesh_rows(mesh)) * _mesh_rows(mesh)
  arrays = [batch[k] for k in ("input_ids", "attention_mask", "positions", "pixel_values")]
  arrays = [np.concatenate([a, np.repeat(a[-1:], padded_rows - rows, 0)]) for a in arrays]
  keys = _image_keys(seed, range(padded_rows))
  static = _TextStatic(cfg, max_new_tokens, temperature == 0, _decode_form(cfg, mesh))
  program = _text_program(static)
  timings = {} if timings is None else timings
  context = sharding_lib.use_mesh(mesh) if mesh is not None else _null()
  with context:
    timings["prepare_s"] = 0.0        # per call, like compile_s and generate_s here
    weights = _timed_decode_weights(p, static.decode_form, "text", timings)
    args = [p.params, weights] + _put(mesh, *arrays) + [keys, jnp.float32(max(temperature, 1e-6)),
                                                        jnp.float32(1.0 if top_p is None else top_p)]
    start = time.perf_counter()
    compiled = _compiled(program, (static, arrays[0].shape, arrays[3].shape, id(mesh)), *args)
    timings["compile_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tokens, steps = compiled(*args)
    tokens = np.asarray(tokens)[:rows]
    timings["generate_s"] = time.perf_counter() - start
    timings["steps"] = int(steps)
  return tokens


def generate_text(p, questions: Sequence, images: Sequence, *, max_new_tokens: int = 512,
                  temperature: float = 0.0, top_p: float | None = None, seed: int = 0,
                  mesh=None, timings: dict | None = None) -> list[str]:
  """Answers to questions about images, decoded without special tokens.

  questions[b]: a question string or a list of {"role", "content"} turns; images[b]: a
  PIL image, a path, a uint8 array, or a list of them (one per <image_placeholder>).
  temperature 0 is greedy; otherwise sampling with optional top_p.
  """
  tokens = generate_text_tokens(p, questions, images, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed, mesh=mesh,
                                timings=timings)
  eos = p.config.eos_token_id
  answers = []
  for row in tokens:
    stop = np.nonzero(row == eos)[0]
    answers.append(p.processor.decode(row[:stop[0]] if len(stop) else row))
  return answers
