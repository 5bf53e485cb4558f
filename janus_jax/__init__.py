"""janus-jax: Janus / Janus-Pro in JAX/Flax.

Names are imported lazily so that `python -m janus_jax --help` and other light entry
points do not pay for importing jax.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "JanusConfig": "janus_jax.config",
    "LLMConfig": "janus_jax.config",
    "VisionConfig": "janus_jax.config",
    "VQConfig": "janus_jax.config",
    "Janus": "janus_jax.modules.janus",
    "init_params": "janus_jax.model",
    "abstract_params": "janus_jax.model",
    "param_shardings": "janus_jax.model",
    "load": "janus_jax.loading",
    "Loaded": "janus_jax.loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'janus_jax' has no attribute {name!r}")
