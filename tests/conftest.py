"""Test-session set-up that must happen before jax is imported.

Eight simulated CPU devices let the sharding tests build a data x fsdp x tensor
mesh of 2 x 2 x 2 on any machine; the parity tests run on the CPU in float32.
x64 stays off: the model runs in float32/bfloat16, as on TPU.
"""
import os

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """The CLIs turn on jax's persistent compilation cache (janus_jax.xla.use_compilation_cache):
  in tests, and in the processes they start, it lives in this session's temp directory
  rather than in ~/.cache."""
  name = "JANUS_JAX_COMPILATION_CACHE"
  if name not in os.environ:
    os.environ[name] = str(tmp_path_factory.mktemp("jax_cache"))
  yield os.environ[name]


@pytest.fixture(scope="session", params=["gqa", "mha"])
def reference(request, tmp_path_factory):
  """(variant, torch model, JanusConfig, Flax params) for one tiny reference config.

  The Flax params are read back from the transformers checkpoint the torch model saved,
  through the converter's name mapping.
  """
  from tests import reference as ref
  from convert.hf import config_from_hf, load_hf
  variant = {v.name: v for v in ref.VARIANTS}[request.param]
  model = ref.build_hf_model(variant)
  directory = ref.save_hf_model(model, tmp_path_factory.mktemp(f"hf_{variant.name}"))
  config = config_from_hf(model.config.to_dict(), ref.TOKENS)
  _, params = load_hf(directory, config)
  return variant, model, config, params
