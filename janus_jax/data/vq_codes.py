"""Images -> VQ codes with the model's own tokenizer, batched over the available devices.

`prepare` uses it to pre-tokenise text-to-image data once, so training never runs the VQ
encoder; the pipeline uses it only for t2i sources that hold raw images.
"""
from __future__ import annotations

import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from janus_jax import checkpoint, xla
from janus_jax.config import JanusConfig
from janus_jax.modules.janus import Janus


def load_vq_params(path: str):
  """(JanusConfig, float32 VQ params) of a checkpoint directory.

  A converted directory is read partially (only `vq/...`), so a 7B checkpoint costs the
  VQ's ~70M parameters of host memory, not the whole model; a PyTorch directory is
  converted on the fly (everything is read).
  """
  if checkpoint.is_converted(path):
    return checkpoint.load_part(path, "vq")
  import janus_jax
  loaded = janus_jax.load(path, dtype="float32")
  return loaded.config, {"vq": loaded.params["vq"]}


class CodeEncoder:
  """pixels float32 [N, S, S, 3] in [-1, 1] (S = config.vq.image_size) -> int32 [N, h*w].

  Runs `Janus.encode_images` in fixed-size batches of `batch_size` rows (the last one
  padded, so one program serves every call), data-parallel over `devices`.
  """

  def __init__(self, config: JanusConfig, vq_params, *, batch_size: int = 16, devices=None):
    devices = list(devices or jax.devices())
    batch_size = max(batch_size, len(devices))
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.config, self.image_size = config, config.vq.image_size
    self.num_tokens = config.vq.num_tokens
    mesh = Mesh(np.asarray(devices), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    self._params = jax.device_put(vq_params, NamedSharding(mesh, PartitionSpec()))
    model = Janus(config.replace(dtype="float32", param_dtype="float32"))
    encode = lambda p, x: model.apply({"params": p}, x, method=Janus.encode_images)
    self._encode = xla.jit(encode, devices[0].platform, in_shardings=(None, rows),
                           out_shardings=rows)
    self._rows = rows
    self._lock = threading.Lock()   # one program at a time when called from reader threads

  @classmethod
  def from_checkpoint(cls, path: str, **kwargs) -> "CodeEncoder":
    config, params = load_vq_params(path)
    return cls(config, params, **kwargs)

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"expected pixels [N, {self.image_size}, {self.image_size}, 3], got "
                       f"{pixels.shape}.")
    out = []
    for start in range(0, len(pixels), self.batch_size):
      chunk = pixels[start:start + self.batch_size]
      padded = np.zeros((self.batch_size,) + chunk.shape[1:], np.float32)
      padded[:len(chunk)] = chunk
      with self._lock:
        codes = self._encode(self._params, jax.device_put(padded, self._rows))
        out.append(np.asarray(codes)[:len(chunk)].astype(np.int32))
    if not out:
      return np.zeros((0, self.num_tokens), np.int32)
    return np.concatenate(out)
