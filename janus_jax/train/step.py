"""The train state and the train step: a pure function compiled once with explicit shardings.

Train state (a plain dict, donated to every step):
  step    int32 []             optimizer steps taken
  params  trainable subtree of the Janus params, float32 master copy
  opt     optax state over `params` only (frozen parameters hold none)
  rng     uint32 [2]           a raw PRNG key, split every step (kept for dropout-style use)

The frozen parameters are a separate, non-donated argument: the step closes over them
and differentiates the trainable subtree only, so no weight gradient is computed for
them. They are not checkpointed; a run rebuilds them from its init source.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from janus_jax import sharding as sharding_lib
from janus_jax import xla
from janus_jax.config import JanusConfig
from janus_jax.data.batch import TOKEN_FIELDS
from janus_jax.modules.janus import Janus
from janus_jax.train import loss as loss_lib
from janus_jax.train import partition

Batch = dict[str, jax.Array]


def forward_hidden(model: Janus, params, batch: Batch):
  """Embeds a batch (text, understanding images, generated-image codes) and runs the LLM.

  Returns the final-normed hidden states [B, T, D] in the compute dtype. Attention is
  causal within each packed segment (`segment_ids`; 0 = padding, never attended to).
  """
  pixel_values = batch.get("pixel_values")
  if pixel_values is not None and pixel_values.shape[1] == 0:
    pixel_values = None
  variables = {"params": params}
  embeds = model.apply(variables, batch["input_ids"], pixel_values, batch["gen_codes"],
                       batch["is_gen"], method=Janus.embed)
  segments = batch["segment_ids"]
  hidden, _ = model.apply(variables, embeds, batch["positions"], segments > 0,
                          segment_ids=segments, method=Janus.decode)
  return hidden


def _micro_batches(batch: Batch, count: int) -> Batch:
  """[B, ...] -> [count, B / count, ...], micro-batch j = rows j, j + count, j + 2·count, ...

  Strided rather than contiguous: the batch axis is sharded in contiguous blocks, so each
  micro-batch keeps rows on every device and the reshape moves no data.
  """
  def split(x):
    x = x.reshape((x.shape[0] // count, count) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return {k: split(v) for k, v in batch.items()}


def make_train_step(model_config: JanusConfig, optimizer: optax.GradientTransformation,
                    schedule: Callable, *, grad_accum_steps: int = 1,
                    loss_chunk: int = 0) -> Callable:
  """The pure step `(state, frozen, batch) -> (state, metrics)`.

  batch: the dict of batch.py, global arrays [B, T] (pixel_values [B, N, S, S, 3]).
  With grad_accum_steps = A > 1 the batch is cut into A micro-batches whose gradients are
  summed in a `lax.scan` (activation memory of B/A rows); the update equals the one of
  the whole batch. metrics: float32 scalars — loss, loss/<kind>, the sums they come from
  (loss_sum*, weight*), grad_norm (before clipping), learning_rate, tokens (non-padding).
  """
  model = Janus(model_config)
  dtype = jnp.dtype(model_config.dtype)

  def scaled_loss(trainable, frozen, batch, scale):
    params = partition.merge(trainable, frozen)
    hidden = forward_hidden(model, params, batch)
    ce = loss_lib.token_losses(params, hidden, batch["targets"], batch["target_head"],
                               dtype=dtype, chunk=loss_chunk)
    sums = loss_lib.weighted_sums(ce, batch["loss_weights"], batch["kind"])
    return sums["loss_sum"] * scale, sums

  grad_fn = jax.grad(scaled_loss, has_aux=True)

  def train_step(state, frozen, batch):
    b, t = batch["input_ids"].shape
    # The summed loss is scaled by a static 1/(B·T) so that gradients (bfloat16 in the
    # backward pass) stay at the magnitude of a mean; rescaled by B·T / Σw below.
    scale = 1.0 / (b * t)
    params = state["params"]
    if grad_accum_steps == 1:
      grads, sums = grad_fn(params, frozen, batch, scale)
    else:
      def body(carry, micro):
        grads, sums = grad_fn(params, frozen, micro, scale)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None
      zero_sums = jax.eval_shape(lambda: loss_lib.weighted_sums(
          jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1, 1), jnp.int32)))
      init = (jax.tree.map(jnp.zeros_like, params),
              jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_sums))
      (grads, sums), _ = jax.lax.scan(body, init, _micro_batches(batch, grad_accum_steps))
    weight = sums["weight"]
    grads = jax.tree.map(lambda g: g * jnp.where(weight > 0, 1.0 / (scale * weight), 0.0), grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt"], params)
    new_params = optax.apply_updates(params, updates)
    rng, _ = jax.random.split(state["rng"])
    metrics = {**sums, **loss_lib.losses_from_sums(sums), "grad_norm": grad_norm,
               "learning_rate": schedule(state["step"]),
               "tokens": (batch["segment_ids"] > 0).sum().astype(jnp.float32)}
    new_state = {"step": state["step"] + 1, "params": new_params, "opt": opt_state, "rng": rng}
    return new_state, jax.tree.map(lambda x: x.astype(jnp.float32), metrics)

  return train_step


# --- shardings ---------------------------------------------------------------------------------
@dataclasses.dataclass
class StateLayout:
  """Abstract shapes and shardings of the train state and the frozen params."""
  mask: dict                 # param tree of bools: True = trainable
  state: dict                # abstract train state (ShapeDtypeStruct with .sharding)
  frozen: dict               # abstract frozen params (ShapeDtypeStruct with .sharding)

  def shardings(self, tree):
    return jax.tree.map(lambda s: s.sharding, tree)


def _with_sharding(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def state_layout(model_config: JanusConfig, optimizer: optax.GradientTransformation,
                 trainable_patterns, mesh: Mesh, rules=sharding_lib.RULES) -> StateLayout:
  """Where every piece of the train state lives on `mesh` (nothing is allocated).

  Parameters follow the logical-axis rules; Adam's moments follow their parameter;
  scalars (step, counts) and the RNG key are replicated.
  """
  from janus_jax.model import abstract_params, param_shardings
  abstract = abstract_params(model_config)
  mask = partition.trainable_mask(abstract, trainable_patterns)
  shardings = param_shardings(model_config, mesh, rules)
  abstract = _with_sharding(abstract, shardings)
  trainable, frozen = partition.split(abstract, mask)
  trainable_shardings = jax.tree.map(lambda s: s.sharding, trainable)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_abstract = jax.eval_shape(optimizer.init, trainable)
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, s: s, opt_abstract, trainable_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))
  state = {
      "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      "params": trainable,
      "opt": _with_sharding(opt_abstract, opt_shardings),
      "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
  }
  return StateLayout(mask=mask, state=state, frozen=frozen)


def batch_layout(mesh: Mesh, global_batch_size: int, seq_len: int, max_images: int,
                 image_size: int) -> Batch:
  """Abstract batch (batch.py fields) with the batch axis sharded over ('data', 'fsdp')."""
  out = {name: jax.ShapeDtypeStruct((global_batch_size, seq_len), dtype,
                                    sharding=sharding_lib.batch_sharding(mesh, 2))
         for name, dtype in TOKEN_FIELDS.items()}
  shape = (global_batch_size, max_images, image_size, image_size, 3)
  out["pixel_values"] = jax.ShapeDtypeStruct(shape, jnp.float32,
                                             sharding=sharding_lib.batch_sharding(mesh, 5))
  return out


def abstract_batch_of(batch: Batch, mesh: Mesh) -> Batch:
  """The abstract layout of a concrete batch, batch axis sharded over ('data', 'fsdp')."""
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                  sharding=sharding_lib.batch_sharding(mesh, v.ndim))
          for k, v in batch.items()}


def compile_train_step(step_fn: Callable, layout: StateLayout, batch: Batch, mesh: Mesh,
                       rules=sharding_lib.RULES, compiler_options: dict | None = None):
  """jax.jit(step_fn) with explicit in/out shardings, the state donated, lowered and
  compiled once for the abstract `batch` (dict of ShapeDtypeStruct with shardings).
  compiler_options: XLA options for this compilation (e.g. {"xla_backend_optimization_level": 0}),
  over `janus_jax.xla.compiler_options` for the mesh's platform.

  Returns the compiled executable (call it as `compiled(state, frozen, batch)`); its
  `cost_analysis()` / `memory_analysis()` describe the program.
  """
  state_sh = layout.shardings(layout.state)
  frozen_sh = layout.shardings(layout.frozen)
  batch_sh = {k: v.sharding for k, v in batch.items()}
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))
  with sharding_lib.use_mesh(mesh, rules):
    options = xla.compiler_options(mesh.devices.flat[0].platform) | dict(compiler_options or {})
    return jitted.lower(layout.state, layout.frozen, batch).compile(options or None)


# --- initialisation ----------------------------------------------------------------------------
def init_optimizer_state(optimizer, layout: StateLayout, trainable, seed: int):
  """The rest of the train state around `trainable`, created directly sharded."""
  state_sh = layout.shardings(layout.state)

  def make(trainable):
    return {"step": jnp.zeros((), jnp.int32), "params": trainable,
            "opt": optimizer.init(trainable),
            "rng": jax.random.key_data(jax.random.PRNGKey(seed)).astype(jnp.uint32)}

  return jax.jit(make, in_shardings=(state_sh["params"],), out_shardings=state_sh)(trainable)


def check_batch_divisibility(global_batch_size: int, grad_accum_steps: int, mesh: Mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % grad_accum_steps:
    raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of "
                     f"grad_accum_steps {grad_accum_steps}.")
  micro = global_batch_size // grad_accum_steps
  if micro % shards:
    raise ValueError(f"each micro-batch has {micro} rows (global_batch_size "
                     f"{global_batch_size} / grad_accum_steps {grad_accum_steps}), not a multiple "
                     f"of the {shards} batch shards (mesh data x fsdp); change one of them.")

