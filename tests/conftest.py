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
