"""janus-jax: Janus / Janus-Pro in JAX/Flax."""
from janus_jax.config import JanusConfig, LLMConfig, VisionConfig, VQConfig
from janus_jax.model import abstract_params, init_params, param_shardings
from janus_jax.modules.janus import Janus

__all__ = ["JanusConfig", "LLMConfig", "VisionConfig", "VQConfig", "Janus", "init_params",
           "abstract_params", "param_shardings"]
__version__ = "0.1.0"
