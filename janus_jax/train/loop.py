"""The train loop: build, resume, step, log, checkpoint, stop cleanly.

`train(config, workdir)` runs one stage to `config.num_steps`. It resumes from the newest
complete checkpoint in `<workdir>/checkpoints` when there is one (train state and data
order), saves every `checkpoint.every` steps and at the end, and on SIGTERM (preemption)
saves the current step and returns. A non-finite loss or gradient norm raises
`TrainingDiverged` before the bad state can be saved, so the last checkpoint stays good.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Callable

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from janus_jax import checkpoint as checkpoint_lib
from janus_jax import sharding as sharding_lib
from janus_jax import xla
from janus_jax.config import JanusConfig
from janus_jax.data.batch import KINDS
from janus_jax.modules.janus import Janus
from janus_jax.train import metrics as metrics_lib
from janus_jax.train import partition
from janus_jax.train.checkpointing import Checkpointer
from janus_jax.train.optimizer import make_optimizer
from janus_jax.train.step import (StateLayout, abstract_batch_of, check_batch_divisibility,
                                  compile_train_step, init_optimizer_state, make_train_step,
                                  state_layout)


class TrainingDiverged(ValueError):
  """The loss or gradient norm became non-finite; the message names the step and checkpoint."""


def model_config_of(config) -> JanusConfig:
  """The JanusConfig a run trains: the preset, or the init checkpoint's config.json, with
  the run's dtypes, remat policy and layer unrolling."""
  if config.init.source == "checkpoint":
    if not config.init.path:
      raise ValueError("config.init.source is 'checkpoint' but config.init.path is empty; pass "
                       "--config.init.path=DIR (a converted checkpoint) or "
                       "--config.init.source=random.")
    base = checkpoint_lib.read_config(config.init.path)
  elif config.init.source == "random":
    base = JanusConfig.preset(config.model.preset)
  else:
    raise ValueError(f"config.init.source={config.init.source!r}; use 'checkpoint' or 'random'.")
  return base.replace(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                      remat_policy=config.model.remat_policy,
                      scan_unroll=config.model.get("scan_unroll", 1))


def _compiler_options(config) -> dict:
  options = config.get("xla_compiler_options") or {}
  return dict(options.to_dict() if hasattr(options, "to_dict") else options)


@functools.lru_cache(maxsize=8)
def _random_init(model_config: JanusConfig, mesh, options: tuple):
  # The same program as janus_jax.init_params, compiled once per (config, mesh, options):
  # compiling the init of every submodule takes seconds even for the tiny preset.
  from janus_jax.model import param_shardings
  model = Janus(model_config)
  init = lambda rng: nn.unbox(model.init(rng, method=Janus.init_all)["params"])
  jitted = jax.jit(init, out_shardings=param_shardings(model_config, mesh))
  options = xla.compiler_options(mesh.devices.flat[0].platform) | dict(options)
  return jitted.lower(jax.random.PRNGKey(0)).compile(options or None)


def initial_params(config, model_config: JanusConfig, mesh):
  """Every parameter, created or read directly into its shards on `mesh`."""
  if config.init.source == "random":
    options = tuple(sorted(_compiler_options(config).items()))
    return _random_init(model_config, mesh, options)(jax.random.PRNGKey(config.init.seed))
  return checkpoint_lib.restore_params(config.init.path, model_config,
                                       dtype=model_config.param_dtype, mesh=mesh)


def build_data_iterator(config, model_config: JanusConfig, mesh):
  """The data iterator the config names (janus_jax.data.pipeline, or the synthetic one)."""
  kwargs = dict(model_config=model_config, global_batch_size=config.global_batch_size,
                mesh=mesh, seed=config.seed, process_index=jax.process_index(),
                process_count=jax.process_count())
  if config.data.get("source") == "synthetic":
    from janus_jax.train.synthetic import build_train_iterator
    return build_train_iterator(config.data, processor=None, **kwargs)
  from janus_jax.data.pipeline import build_train_iterator
  return build_train_iterator(config.data, processor=_processor(config, model_config), **kwargs)


def _processor(config, model_config):
  directory = config.data.get("tokenizer_dir") or config.init.path
  if not directory or not os.path.isfile(os.path.join(directory, "tokenizer.json")):
    raise ValueError("the data pipeline needs a tokenizer: set config.data.tokenizer_dir (or "
                     "an init checkpoint with tokenizer.json).")
  from janus_jax.processor import Processor
  return Processor.from_directory(directory, model_config)


class _Preemption:
  """SIGTERM -> a flag the loop polls (single process); several processes agree through
  jax's preemption sync point, which the distributed runtime arms for SIGTERM."""

  def __init__(self):
    self.flag = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:
        return False
    return self.flag

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _summarise(interval: list[dict], elapsed: float, positions_per_step: int,
               flops_per_step: float, peak: float) -> dict[str, float]:
  """Host metrics of the steps since the last log -> the scalars to write."""
  total = lambda key: float(sum(m[key] for m in interval))
  steps = len(interval)
  out = {"loss": total("loss_sum") / max(total("weight"), 1e-30)}
  for kind in KINDS:
    weight = total(f"weight/{kind}")
    out[f"loss/{kind}"] = total(f"loss_sum/{kind}") / weight if weight > 0 else float("nan")
  step_time = elapsed / steps
  out.update(grad_norm=total("grad_norm") / steps,
             learning_rate=float(interval[-1]["learning_rate"]),
             step_time=step_time,
             tokens_per_second=positions_per_step / step_time,
             nonpad_tokens_per_second=total("tokens") / elapsed,
             mfu=flops_per_step / step_time / peak)
  return out


def _write_json(path: str, data) -> None:
  with open(path, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True, default=str)
    f.write("\n")


@dataclasses.dataclass
class Setup:
  """Everything a run derives from its config before touching data or checkpoints."""
  config: object
  mesh: Mesh
  model_config: JanusConfig
  optimizer: optax.GradientTransformation
  schedule: Callable
  layout: StateLayout

  def params(self):
    """(trainable, frozen) initial params, directly sharded."""
    return partition.split(initial_params(self.config, self.model_config, self.mesh),
                           self.layout.mask)

  def new_state(self, trainable):
    return init_optimizer_state(self.optimizer, self.layout, trainable, self.config.seed)

  def data(self):
    return build_data_iterator(self.config, self.model_config, self.mesh)

  def step_fn(self):
    return make_train_step(self.model_config, self.optimizer, self.schedule,
                           grad_accum_steps=self.config.grad_accum_steps,
                           loss_chunk=self.config.loss_chunk)

  def compile(self, batch):
    """The train step compiled for `batch`'s shapes: call as compiled(state, frozen, batch)."""
    return compile_train_step(self.step_fn(), self.layout, abstract_batch_of(batch, self.mesh),
                              self.mesh, compiler_options=_compiler_options(self.config))


def setup(config, devices=None) -> Setup:
  """Mesh, model config, optimizer and state layout of `config` (devices: default all)."""
  mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                devices=devices)
  check_batch_divisibility(config.global_batch_size, config.grad_accum_steps, mesh)
  model_config = model_config_of(config)
  optimizer, schedule = make_optimizer(config.optimizer)
  layout = state_layout(model_config, optimizer, config.trainable, mesh)
  return Setup(config, mesh, model_config, optimizer, schedule, layout)


def train(config, workdir: str, *, devices=None, log=print, on_step=None) -> dict:
  """Runs (or resumes) the stage `config` in `workdir`; returns a summary dict.

  devices: the devices of the mesh (default: all). log: where progress lines go.
  on_step: called with the step number after each step is dispatched (progress bars).
  Summary keys: step (reached), start_step, preempted, last_checkpoint, metrics (the last
  logged scalars), export (directory or None).
  """
  workdir = os.path.abspath(workdir)
  main_process = jax.process_index() == 0
  run = setup(config, devices)
  if main_process:
    os.makedirs(workdir, exist_ok=True)
    run.model_config.to_json(os.path.join(workdir, "model_config.json"))
    _write_json(os.path.join(workdir, "train_config.json"), config.to_dict())
  log(f"stage {config.stage} ({config.variant}): "
      f"{partition.count(run.layout.state['params']):,} trainable / "
      f"{partition.count(run.layout.frozen):,} frozen parameters on mesh {dict(run.mesh.shape)} "
      f"({jax.process_count()} process(es))")

  checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep,
                              async_save=config.checkpoint.async_save)
  writer = metrics_lib.MetricWriter(workdir, enabled=main_process, tensorboard=config.tensorboard)
  try:
    data = run.data()
    trainable, frozen = run.params()
    latest = checkpointer.latest_step()
    if latest is None:
      state = run.new_state(trainable)
    else:
      del trainable
      state, data_state = checkpointer.restore(latest, run.layout.state)
      data.set_state(data_state)
      log(f"resumed from step {latest} ({checkpointer.directory})")
    start = int(np.asarray(state["step"]))
    summary = dict(step=start, start_step=start, preempted=False, metrics={},
                   last_checkpoint=latest, export=None)
    if start < config.num_steps:
      state = _run(run, state, frozen, data, checkpointer, writer, log, summary, on_step)
    if config.export and not summary["preempted"] and summary["step"] >= config.num_steps:
      summary["export"] = export(workdir, partition.merge(state["params"], frozen),
                                 run.model_config, config)
      log(f"exported params to {summary['export']}")
    return summary
  finally:
    checkpointer.close()
    writer.close()


def _run(run: Setup, state, frozen, data, checkpointer, writer, log, summary, on_step=None):
  """Steps from summary["start_step"] to config.num_steps (updating `summary`); returns
  the last state."""
  config = run.config
  start = summary["start_step"]
  batch = next(data)
  t0 = time.perf_counter()
  with xla.counting_cache_hits() as hits:
    compiled = run.compile(batch)
  b, t = batch["input_ids"].shape
  images = batch["pixel_values"].shape[1]
  flops = metrics_lib.train_flops(run.model_config, run.layout.mask, b, t, images)
  peak, peak_source = metrics_lib.peak_flops(list(run.mesh.devices.flat), run.model_config.dtype)
  how = "loaded the train step from the compilation cache" if hits[0] else "compiled the train step"
  log(f"{how} in {time.perf_counter() - t0:.1f} s; batch {b} x {t}; "
      f"{flops / 1e9:,.2f} GFLOP/step (analytic model FLOPs); peak {peak / 1e9:,.1f} GFLOP/s "
      f"({peak_source})")

  def check(step, host):
    if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
      checkpointer.wait()
      raise TrainingDiverged(
          f"non-finite loss ({host['loss']}) or gradient norm ({host['grad_norm']}) at step "
          f"{step}; training stopped. The last good checkpoint is step "
          f"{checkpointer.latest_step()} in {checkpointer.directory}: lower the learning rate "
          "or inspect the data, then rerun (the run resumes from it).")

  interval, pending = [], None
  last_log, last_save = time.perf_counter(), summary["last_checkpoint"]
  with _Preemption() as preemption:
    for step in range(start, config.num_steps):
      if step > start:
        try:
          batch = next(data)
        except StopIteration:   # a finite data set (data.num_epochs) ran out
          log(f"the data ran out after step {step}; stopping there.")
          if pending is not None:
            check(pending[0], jax.device_get(pending[1]))
          if last_save != step:
            checkpointer.save(step, state, data.get_state(), force=True)
            last_save = step
          break
      state, metrics = compiled(state, frozen, batch)
      done = step + 1
      if on_step is not None:
        on_step(done)
      # Check the previous step's metrics now (it has finished): one step stays in flight.
      if pending is not None:
        host = jax.device_get(pending[1])
        check(pending[0], host)
        interval.append(host)
      pending = (done, metrics)
      preempted = preemption.reached(done)
      save = preempted or done == config.num_steps or done % config.checkpoint.every == 0
      if save or preempted or done % config.log_every == 0:
        host = jax.device_get(metrics)
        check(done, host)
        interval.append(host)
        pending = None
      if interval and (done % config.log_every == 0 or done == config.num_steps or preempted):
        now = time.perf_counter()
        scalars = _summarise(interval, now - last_log, b * t, flops, peak)
        writer.write(done, scalars)
        log(metrics_lib.format_line(done, config.num_steps, scalars))
        summary["metrics"] = scalars
        interval, last_log = [], now
      if save:
        checkpointer.save(done, state, data.get_state(), force=True)
        last_save = done
      summary["step"] = done
      if preempted:
        checkpointer.wait()
        log(f"preempted (SIGTERM): saved step {done} to {checkpointer.directory}; rerun the "
            "same command to resume.")
        summary["preempted"] = True
        break
  checkpointer.wait()
  summary["last_checkpoint"] = last_save
  return state


def export(workdir: str, params, model_config: JanusConfig, config) -> str:
  """Writes `<workdir>/export`: params + config.json (+ the init checkpoint's tokenizer
  files), the directory format `janus_jax.load`, generate and chat read, and the init
  source of the next stage."""
  directory = os.path.join(workdir, "export")
  source = config.init.path if config.init.source == "checkpoint" else None
  stored = model_config.replace(dtype="float32", remat_policy="none", scan_unroll=1)
  # Every process writes its own shards of the one Orbax checkpoint (atomically: Orbax
  # renames a finished temporary); process 0 writes config.json and the tokenizer files.
  import orbax.checkpoint.experimental.v1 as ocp1
  ocp1.save(os.path.join(directory, checkpoint_lib.PARAMS_DIR), params, overwrite=True)
  if jax.process_index() == 0:
    checkpoint_lib.write_sidecars(directory, stored, source)
  return directory
