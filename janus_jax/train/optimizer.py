"""AdamW with global-norm clipping and a constant learning rate after linear warm-up.

Janus-Pro (JANUS.md §6.3): AdamW β 0.9 / 0.95, weight decay 0, gradient clip 1.0,
constant LR 1e-3 / 1e-4 / 4e-5 after 600 / 5000 / 0 warm-up steps. The warm-up shape
is not published; ours rises linearly so that step s (0-based) uses lr·(s+1)/warmup.
Optionally (decay_steps > 0, not part of the published recipe; the demo's short stages use
it) the rate then follows a cosine from lr down to lr·final_fraction at step decay_steps.
The optimizer only ever sees the trainable subtree, so frozen parameters hold no state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(learning_rate: float, warmup_steps: int, decay_steps: int = 0,
                           final_fraction: float = 0.1):
  """step -> learning rate: linear warm-up over `warmup_steps`, then constant or, with
  decay_steps > warmup_steps, a cosine from learning_rate to learning_rate * final_fraction
  reached at step decay_steps (and kept after it)."""
  if decay_steps and decay_steps <= warmup_steps:
    raise ValueError(f"optimizer.decay_steps ({decay_steps}) must exceed warmup_steps "
                     f"({warmup_steps}), or be 0 for a constant rate.")
  def warmup(step):
    rate = jnp.asarray(learning_rate, jnp.float32)
    if warmup_steps <= 0:
      return rate
    return rate * jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / warmup_steps)
  if not decay_steps:
    return warmup
  # optax's cosine is flat at alpha * lr after its decay_steps; join_schedules hands it
  # the steps counted from the end of the warm-up.
  cosine = optax.cosine_decay_schedule(learning_rate, decay_steps - warmup_steps,
                                       alpha=final_fraction)
  return optax.join_schedules([warmup, cosine], [warmup_steps])


def _decay_mask(params):
  # Decay matrices (kernels, embeddings), not biases or norm scales.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_config) -> tuple[optax.GradientTransformation, callable]:
  """(optax transformation, schedule) from the config's `optimizer` block.

  opt_config fields: learning_rate, warmup_steps, b1, b2, eps, weight_decay, clip_norm and
  optionally decay_steps, final_fraction (see learning_rate_schedule).
  """
  schedule = learning_rate_schedule(opt_config.learning_rate, opt_config.warmup_steps,
                                    opt_config.get("decay_steps", 0),
                                    opt_config.get("final_fraction", 0.1))
  parts = []
  if opt_config.clip_norm and opt_config.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.clip_norm))
  parts.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                           weight_decay=opt_config.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule
