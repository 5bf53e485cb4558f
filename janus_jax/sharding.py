"""Meshes and the one table that maps logical axis names to mesh axes.

Modules name the axes of every parameter and large activation ("embed", "mlp",
"heads", ...); this file alone decides where those land on the ('data', 'fsdp',
'tensor') mesh. Changing the parallelism strategy means editing `RULES`.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import jax
import numpy as np
import flax.linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, or None = replicated). Flax assigns each mesh axis
# at most once per array, in the order of this table, so an activation's "embed" is not
# sharded over 'fsdp' when its "batch" already is.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("head_dim", None),
    # The VQ tokenizer and the code embedding are small: replicated.
    ("codebook", None),
    ("conv_in", None),
    ("conv_out", None),
    ("norm", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError("at most one mesh axis size may be -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into data={data}, fsdp={fsdp}, "
                       f"tensor={tensor}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                     f"{int(np.prod(sizes))} devices, {len(devices)} available.")
  device_array = np.asarray(devices).reshape(sizes)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=RULES):
  """A pytree of logical PartitionSpecs -> a pytree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_shardings(boxed_params, mesh: Mesh, rules=RULES):
  """NamedShardings for a (possibly abstract) tree of logically-partitioned params."""
  return logical_to_sharding(nn.get_partition_spec(boxed_params), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards the leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=RULES):
  """Makes `mesh` current and the logical-axis rules active (for activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
