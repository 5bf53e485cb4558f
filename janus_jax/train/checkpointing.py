"""Train checkpoints: Orbax CheckpointManager over the train state and the data-iterator state.

Layout under `<workdir>/checkpoints/<step>/`:
  state/   the train state (step, trainable params, optimizer state, RNG), sharded arrays
  data/    the data iterator's `get_state()` (JSON)

Saves are asynchronous (the step loop goes on while the arrays are written) and atomic:
Orbax writes into a temporary directory and renames it when complete, so a process killed
at any moment — also during a save — leaves the previous complete checkpoint as the
latest one; leftover temporaries are removed at the next start.
"""
from __future__ import annotations

import os

import orbax.checkpoint as ocp

from janus_jax.errors import CheckpointError


class Checkpointer:
  """Keeps the newest `keep` checkpoints; the loop decides when to save."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    """Starts saving (async); True if a save was started for this step."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state):
    """(state laid out as `abstract_state` — ShapeDtypeStructs with shardings —, data state)."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointError(f"cannot restore step {step} from {self.directory}: {e}. Was it "
                            "written by a run with another config (stage, model, optimizer)?"
                            ) from e
    return restored["state"], restored["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
