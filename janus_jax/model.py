"""Creating parameters for a config, optionally directly sharded over a mesh."""
from __future__ import annotations

import jax
import flax.linen as nn
from jax.sharding import Mesh

from janus_jax import sharding, xla
from janus_jax.config import JanusConfig
from janus_jax.modules.janus import Janus


def _boxed_init(config: JanusConfig):
  model = Janus(config)
  return lambda rng: model.init(rng, method=Janus.init_all)["params"]


def abstract_params(config: JanusConfig, boxed: bool = False):
  """Shapes and dtypes of every parameter, without allocating (jax.eval_shape)."""
  tree = jax.eval_shape(_boxed_init(config), jax.random.key(0))
  return tree if boxed else nn.unbox(tree)


def param_shardings(config: JanusConfig, mesh: Mesh, rules=sharding.RULES):
  """NamedSharding of every parameter under the logical-axis rules."""
  return sharding.param_shardings(abstract_params(config, boxed=True), mesh, rules)


def init_params(config: JanusConfig, rng: jax.Array, mesh: Mesh | None = None,
                rules=sharding.RULES):
  """Random parameters of every submodule as a plain nested dict of arrays.

  With a mesh, initialisation is one jitted program whose outputs are laid out by the
  rules, so each device only ever holds its own shards.
  """
  init = _boxed_init(config)
  unboxed = lambda r: nn.unbox(init(r))
  if mesh is None:
    return xla.jit(unboxed)(rng)
  return xla.jit(unboxed, mesh.devices.flat[0].platform,
                 out_shardings=param_shardings(config, mesh, rules))(rng)
