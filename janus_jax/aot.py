"""Ahead-of-time compilation for a Cloud TPU slice from a CPU host: does it fit, how fast.

  python -m janus_jax.aot --config experiments/stage2.py:pro_7b --topology v5p-64
  python -m janus_jax.aot --sample janus-pro-7b --batch 16 --topology v5e-16

Needs the `libtpu` package (`pip install "jax[tpu]"`, in its own virtual environment)
and `JAX_PLATFORMS=cpu`: `jax.experimental.topologies` then describes the slice's
chips as compile-only devices, the real program is lowered and compiled for them with
abstract inputs (nothing is allocated), and XLA's own memory and cost analyses say
how much HBM each chip needs and how many FLOPs a step costs — or that it does not fit.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

# slice -> (topology_name, chip_config_name, chips, wrap, HBM GB per chip, peak bf16 TFLOP/s per chip)
SLICES = {
    **{f"v4-{2 * n}": (f"v4:{t}", "megacore", n, w, 32, 275) for n, t, w in (
        (4, "2x2x1", (False,) * 3), (8, "2x2x2", (False,) * 3), (16, "2x2x4", (False,) * 3),
        (32, "2x4x4", (False,) * 3), (64, "4x4x4", (True,) * 3))},
    **{f"v5e-{n}": (f"v5e:{t}", "default", n, w, 16, 197) for n, t, w in (
        (4, "2x2", (False,) * 3), (8, "2x4", (False,) * 3), (16, "4x4", (False,) * 3),
        (32, "4x8", (False,) * 3), (64, "8x8", (False,) * 3), (256, "16x16", (True, True, False)))},
    **{f"v5p-{2 * n}": (f"v5:{t}", "megacore", n, w, 95, 459) for n, t, w in (
        (4, "2x2x1", (False,) * 3), (8, "2x2x2", (False,) * 3), (16, "2x2x4", (False,) * 3),
        (32, "2x4x4", (False,) * 3), (64, "4x4x4", (True,) * 3), (128, "4x4x8", (True,) * 3))},
    **{f"v6e-{n}": (f"v6e:{t}", "default", n, w, 32, 918) for n, t, w in (
        (4, "2x2", (False,) * 3), (8, "2x4", (False,) * 3), (16, "4x4", (False,) * 3),
        (32, "4x8", (False,) * 3), (64, "8x8", (False,) * 3), (256, "16x16", (True, True, False)))},
}


@dataclasses.dataclass
class Report:
  """Per-chip memory (bytes) and FLOPs of one compiled program."""
  program: str
  slice: str
  mesh: dict
  fits: bool
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  hbm_bytes: int = 0
  flops: float = 0.0            # XLA's count; a loop body is counted once
  model_flops: float = 0.0      # analytic count for the whole call, per chip
  compile_s: float = 0.0
  projected_step_s: float = 0.0  # model FLOPs / (peak x projected_mfu)
  projected_mfu: float = 0.0
  error: str = ""

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def lines(self) -> list[str]:
    gb = lambda b: f"{b / 2**30:.2f} GiB"
    if not self.fits:
      return [f"{self.program} on {self.slice} mesh {self.mesh}: DOES NOT FIT ({self.error})"]
    return [f"{self.program} on {self.slice} mesh {self.mesh} (compiled in {self.compile_s:.1f} s)",
            f"  per chip: arguments {gb(self.argument_bytes)}, outputs {gb(self.output_bytes)} "
            f"(aliased {gb(self.alias_bytes)}), temporaries {gb(self.temp_bytes)}, "
            f"total {gb(self.total_bytes)} of {gb(self.hbm_bytes)} HBM",
            f"  FLOPs per chip: XLA cost analysis {self.flops:.3e} (loop bodies counted once)"
            + (f", model FLOPs per call {self.model_flops:.3e}" if self.model_flops else "")
            ] + ([f"  projected step time {self.projected_step_s:.2f} s at "
                  f"{self.projected_mfu:.0%} MFU"] if self.projected_step_s else [])


def topology_mesh(slice_name: str, data: int = 1, fsdp: int = -1, tensor: int = 1):
  """Compile-only TPU devices of a slice arranged as a ('data','fsdp','tensor') mesh."""
  from jax.experimental import topologies
  from janus_jax.sharding import make_mesh
  if slice_name not in SLICES:
    raise ValueError(f"unknown slice {slice_name!r}; known: {', '.join(SLICES)}")
  topology, chip_config, chips, wrap, _, _ = SLICES[slice_name]
  bounds = (2, 2, 1)
  desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                      chip_config_name=chip_config, chips_per_host_bounds=bounds,
                                      num_slices=1, wrap=wrap)
  return make_mesh(data, fsdp, tensor, devices=desc.devices)


def analyse(program: str, slice_name: str, mesh, compile_fn) -> Report:
  """Runs `compile_fn()` (returns a compiled executable) and reads XLA's memory and cost
  analyses; an out-of-memory verdict of the compiler becomes `fits=False`."""
  hbm = SLICES[slice_name][4] * 10**9
  report = Report(program, slice_name, dict(mesh.shape), fits=True, hbm_bytes=hbm)
  start = time.perf_counter()
  try:
    compiled = compile_fn()
  except Exception as e:  # noqa: BLE001 - XLA reports OOM as a generic runtime error
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      report.fits, report.error = False, str(e).splitlines()[0][:300]
      return report
    raise
  report.compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  report.argument_bytes = memory.argument_size_in_bytes
  report.output_bytes = memory.output_size_in_bytes
  report.alias_bytes = memory.alias_size_in_bytes
  report.temp_bytes = memory.temp_size_in_bytes
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report.flops = float(cost.get("flops", 0.0))
  report.fits = report.total_bytes <= hbm
  if not report.fits:
    report.error = f"needs {report.total_bytes / 2**30:.1f} GiB per chip"
  return report


def sampling_report(preset: str, batch: int, slice_name: str, prompt_length: int = 64,
                    dtype: str = "bfloat16", **mesh_axes) -> Report:
  """generate_images' compiled program (prefill + every image token) for `batch` images."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec
  from janus_jax import sampling, sharding
  from janus_jax.config import JanusConfig
  from janus_jax.model import abstract_params, param_shardings
  config = JanusConfig.preset(preset).replace(dtype=dtype, param_dtype=dtype)
  mesh = topology_mesh(slice_name, **mesh_axes)
  shardings = param_shardings(config, mesh)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params(config), shardings)
  rows = sharding.batch_sharding(mesh, 2)
  ids = jax.ShapeDtypeStruct((batch, prompt_length), jnp.int32, sharding=rows)
  keys = jax.ShapeDtypeStruct((batch,), jax.random.key(0).dtype,
                              sharding=NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
  # The TPU program: layers stay a loop (unrolled decoding is a CPU-backend choice).
  program = sampling._image_program(sampling._ImageStatic(config, None, False, False, False))

  def compile_fn():
    with sharding.use_mesh(mesh):
      return program.lower(params, None, ids, ids, ids, keys, scalar, scalar, scalar).compile()
  report = analyse(f"generate_images {preset} batch {batch}", slice_name, mesh, compile_fn)
  # 2 FLOPs per weight per row per token over the decode path (layers, gen head, gen
  # aligner); CFG doubles the rows. Attention over the cache is left out (small here).
  leaves = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  shapes = abstract_params(config)
  weights = (leaves(shapes["llm"]["layers"]) + leaves(shapes["gen_head"])
             + leaves(shapes["gen_aligner"]))
  tokens = config.vq.num_tokens + prompt_length
  report.model_flops = 2.0 * weights * 2 * batch * tokens / mesh.size
  return report


def load_train_config(spec: str, overrides=()):
  """`experiments/<file>.py:<arg>` plus `--config.a.b=value` overrides -> ConfigDict."""
  import ast
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_janus_train_config", path)
  if module_spec is None:
    raise ValueError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key, _, value = item.removeprefix("--config.").partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def train_report(spec: str, slice_name: str, overrides=(), mfu: float = 0.4,
                 **mesh_axes) -> Report:
  """The real train step of a stage config compiled for a slice (random-init shapes)."""
  from janus_jax.train import metrics, optimizer as optimizer_lib, step as step_lib
  from janus_jax.train.loop import model_config_of
  config = load_train_config(spec, overrides)
  config.init.source = "random"          # the architecture comes from the preset
  model_config = model_config_of(config)
  mesh = topology_mesh(slice_name, **(mesh_axes or dict(config.mesh)))
  optimizer, schedule = optimizer_lib.make_optimizer(config.optimizer)
  layout = step_lib.state_layout(model_config, optimizer, config.trainable, mesh)
  batch = step_lib.batch_layout(mesh, config.global_batch_size, config.data.seq_len,
                                config.data.max_images, model_config.vision.image_size)
  step_fn = step_lib.make_train_step(model_config, optimizer, schedule,
                                     grad_accum_steps=config.grad_accum_steps,
                                     loss_chunk=config.loss_chunk)
  name = (f"train step {spec} (batch {config.global_batch_size} x {config.data.seq_len}, "
          f"accum {config.grad_accum_steps}, remat {model_config.remat_policy})")
  report = analyse(name, slice_name, mesh,
                   lambda: step_lib.compile_train_step(step_fn, layout, batch, mesh))
  total = metrics.train_flops(model_config, layout.mask, config.global_batch_size,
                              config.data.seq_len, config.data.max_images)
  report.model_flops = total / mesh.size
  peak = SLICES[slice_name][5] * 1e12
  report.projected_step_s = report.model_flops / (peak * mfu)
  report.projected_mfu = mfu
  return report


def _mesh_args(text: str | None) -> dict:
  if not text:
    return {}
  data, fsdp, tensor = (int(x) for x in text.split(","))
  return dict(data=data, fsdp=fsdp, tensor=tensor)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m janus_jax.aot",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--topology", required=True, help=f"one of {', '.join(SLICES)}")
  parser.add_argument("--config", help="experiments/<stage>.py:<variant> (train step)")
  parser.add_argument("--sample", help="preset name: compile generate_images instead")
  parser.add_argument("--batch", type=int, default=16, help="images per batch (--sample)")
  parser.add_argument("--mesh", help="data,fsdp,tensor (default: the config's, or all fsdp)")
  parser.add_argument("--json", help="also write the report as JSON here")
  args, rest = parser.parse_known_args(argv)
  if bool(args.config) == bool(args.sample):
    parser.error("give exactly one of --config and --sample")
  try:
    if args.sample:
      report = sampling_report(args.sample, args.batch, args.topology, **_mesh_args(args.mesh))
    else:
      report = train_report(args.config, args.topology, rest, **_mesh_args(args.mesh))
  except (ValueError, RuntimeError) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1
  print("\n".join(report.lines()))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({**dataclasses.asdict(report), "total_bytes": report.total_bytes}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
