"""Small building blocks shared by the Janus modules.

Every parameter is declared with `self.param` wrapped in `nn.with_logical_partitioning`,
so it carries logical axis names that `janus_jax.sharding` maps onto the mesh, and
matmuls are einsums (DESIGN.md: `DenseGeneral` with multi-dim kernels misbehaves with
logical partitioning under `jax.set_mesh`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = jnp.dtype
default_init = nn.initializers.normal(stddev=0.02)


def dtype_of(name: str) -> Dtype:
  return jnp.dtype(name)


def gelu(x):
  """Exact (erf) GELU, as torch's nn.GELU() and HF's "gelu"."""
  return jax.nn.gelu(x, approximate=False)


def dense(x, w):
  """x [..., in] times w [in, *out] -> [..., *out], computed as one 2-D product
  [prod(...), in] x [in, prod(out)].

  Flattening matters for training: the weight gradient of a product over [B, T, in]
  contracts two axes (B and T), and XLA:CPU then transposes (copies) the activation
  gradient before its matmul; for the demo's Stage II step those copies took a quarter
  of the step (experiments in the README, "The demo"). The flat product contracts one
  axis and needs no copy. On TPU the reshapes are free.
  """
  lead, out = x.shape[:-1], w.shape[1:]
  y = jnp.dot(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[0], -1))
  return y.reshape(*lead, *out)


class Linear(nn.Module):
  """y = x @ kernel + bias over the last axis.

  x: [..., in] -> [..., features]; kernel [in, features] with logical names `names`.
  """
  features: int
  names: tuple[str | None, str | None]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = default_init

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.names),
                        (x.shape[-1], self.features), self.param_dtype)
    y = dense(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[1:]),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Token embedding table [num, features]; ids [...] int -> [..., features]."""
  num_embeddings: int
  features: int
  names: tuple[str | None, str | None] = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids):
    table = self.param("embedding", nn.with_logical_partitioning(default_init, self.names),
                       (self.num_embeddings, self.features), self.param_dtype)
    return jnp.take(table, ids, axis=0).astype(self.dtype)


class RMSNorm(nn.Module):
  """LLaMA RMSNorm: normalise in float32, cast back, then multiply by the weight."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x32.astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, computed in float32."""
  eps: float = 1e-6
  name_axis: str | None = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.name_axis,)),
                       (features,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.name_axis,)),
                      (features,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class MlpProjector(nn.Module):
  """The `mlp_gelu` depth-2 projector used by both aligners and the generation head.

  x [..., in] -> Linear(in, hidden) -> GELU(erf) -> Linear(hidden, out) -> [..., out].
  """
  hidden: int
  out: int
  in_name: str | None = None
  out_name: str | None = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Linear(self.hidden, (self.in_name, "mlp"), name="fc1", **kw)(x)
    x = gelu(x)
    return Linear(self.out, ("mlp", self.out_name), name="fc2", **kw)(x)


def remat_policy(name: str):
  """Maps a config name to a `jax.checkpoint` policy (None = save nothing)."""
  policies = jax.checkpoint_policies
  return {
      "full": None,
      "save_nothing": policies.nothing_saveable,
      "dots": policies.checkpoint_dots,
      "dots_no_batch": policies.checkpoint_dots_with_no_batch_dims,
  }[name]


def maybe_remat(module_cls, policy_name: str, static_argnums: Sequence[int] = ()):
  """Wraps a layer class in `nn.remat` unless the policy is "none"."""
  if policy_name == "none":
    return module_cls
  return nn.remat(module_cls, policy=remat_policy(policy_name), prevent_cse=False,
                  static_argnums=tuple(static_argnums))
