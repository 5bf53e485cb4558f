"""`janus_jax.load`: one call from a checkpoint directory to a ready model."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from jax.sharding import Mesh

from janus_jax import checkpoint, sharding
from janus_jax.config import JanusConfig
from janus_jax.modules.janus import Janus

_COMPUTE_DTYPE = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


@dataclasses.dataclass
class Loaded:
  """What `load` returns: the config, the Flax module, its params and the processor.

  `processor` is None when the directory has no tokenizer files.
  """
  config: JanusConfig
  model: Janus
  params: Any
  processor: Any = None
  directory: str | None = None


def load(path: str, dtype: str | None = "bfloat16", mesh: Mesh | None = None,
         rules=sharding.RULES) -> Loaded:
  """Loads a converted checkpoint directory, or a PyTorch one (converted on the fly).

  dtype: parameter dtype after loading ("bfloat16", "float32"; None keeps the stored
  one); the compute dtype follows it. mesh: each parameter is placed with its rule-given
  sharding, so each device receives only its shard.
  """
  if not os.path.isdir(path):
    raise checkpoint.CheckpointError(f"{path} is not a directory; pass a converted checkpoint "
                                     "or a PyTorch checkpoint folder.")
  if checkpoint.is_converted(path):
    config = checkpoint.read_config(path)
    params = checkpoint.restore_params(path, config, dtype, mesh, rules)
  else:
    from convert.pipeline import load_pytorch   # the converter is only needed for this path
    config, params = load_pytorch(path, dtype=dtype, mesh=mesh, rules=rules)
  if dtype is not None:
    config = config.replace(param_dtype=dtype, dtype=_COMPUTE_DTYPE[dtype])
  return Loaded(config=config, model=Janus(config), params=params,
                processor=_processor(path, config), directory=path)


def _processor(path: str, config: JanusConfig):
  if not os.path.isfile(os.path.join(path, "tokenizer.json")):
    return None
  try:
    from janus_jax.processor import Processor
  except ImportError:   # the processor arrives with the sampling code
    return None
  return Processor.from_directory(path, config)
