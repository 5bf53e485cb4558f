"""LlamaGen VQ-16 image tokenizer (JANUS.md §2.5), NHWC, configured by `VQConfig`.

pixels [B,H,W,3] in [-1,1] --encode--> codes int32 [B, g*g] --decode--> images [B,H,W,3],
with g = `config.grid_size`. Parameter names mirror transformers' `JanusVQVAE`
(`encoder.down.{i}.block.{j}` -> `encoder/down_{i}/block_{j}`) so the converter is a
rename plus OIHW->HWIO transposes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from janus_jax.config import VQConfig

Dtype = jnp.dtype
HIGHEST = jax.lax.Precision.HIGHEST
_wlp = nn.with_logical_partitioning


def swish(x):
  return x * jax.nn.sigmoid(x)


def l2_normalize(x, eps: float = 1e-12):
  """As torch's F.normalize(x, dim=-1): x / max(|x|, eps), in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class Conv(nn.Module):
  """2-D convolution, x [B,H,W,Cin] -> [B,H',W',features]; kernel HWIO, bias.

  `padding` defaults to symmetric k//2 ("same" for stride 1).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: tuple[tuple[int, int], tuple[int, int]] | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    # torch's default Conv2d init: uniform with bound 1/sqrt(fan_in).
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    kernel = self.param("kernel", _wlp(init, (None, None, "conv_in", "conv_out")),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", _wlp(nn.initializers.zeros, ("conv_out",)), (self.features,),
                      self.param_dtype)
    pad = self.padding if self.padding is not None else ((k // 2, k // 2),) * 2
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
    return y + bias.astype(self.dtype)


class GroupNorm(nn.Module):
  """GroupNorm over contiguous channel groups of x [B,H,W,C], statistics in float32."""
  groups: int
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    scale = self.param("scale", _wlp(nn.initializers.ones, ("norm",)), (c,), self.param_dtype)
    bias = self.param("bias", _wlp(nn.initializers.zeros, ("norm",)), (c,), self.param_dtype)
    x32 = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
    mean = jnp.mean(x32, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2, 4), keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class ResnetBlock(nn.Module):
  """x [B,H,W,Cin] -> [B,H,W,features]: norm1-swish-conv1-norm2-swish-conv2 + shortcut."""
  features: int
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = Conv(self.features, name="conv1", **kw)(swish(GroupNorm(self.groups, name="norm1", **kw)(x)))
    h = Conv(self.features, name="conv2", **kw)(swish(GroupNorm(self.groups, name="norm2", **kw)(h)))
    if x.shape[-1] != self.features:
      x = Conv(self.features, kernel_size=1, name="nin_shortcut", **kw)(x)
    return x.astype(self.dtype) + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions, residual; x [B,H,W,C] -> same."""
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GroupNorm(self.groups, name="norm", **kw)(x)
    q, k, v = (Conv(c, kernel_size=1, name=n, **kw)(h).reshape(b, hh * ww, c) for n in "qkv")
    logits = jnp.einsum("bqc,bkc->bqk", q, k, precision=HIGHEST,
                        preferred_element_type=jnp.float32) * c ** -0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bqk,bkc->bqc", probs, v, precision=HIGHEST).reshape(b, hh, ww, c)
    return x.astype(self.dtype) + Conv(c, kernel_size=1, name="proj_out", **kw)(out)


class Level(nn.Module):
  """One resolution level: res blocks (each followed by attention if `attn`), then an
  optional resample ("down": stride-2 conv, "up": nearest x2 + conv)."""
  features: int
  num_blocks: int
  groups: int
  attn: bool = False
  resample: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_blocks):
      x = ResnetBlock(self.features, self.groups, name=f"block_{j}", **kw)(x)
      if self.attn:
        x = AttnBlock(self.groups, name=f"attn_{j}", **kw)(x)
    if self.resample == "down":
      # The original pads only bottom/right by one (F.pad(x, (0,1,0,1))) before a VALID conv.
      x = Conv(self.features, stride=2, padding=((0, 1), (0, 1)), name="downsample", **kw)(x)
    elif self.resample == "up":
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = Conv(self.features, name="upsample", **kw)(x)
    return x


class MidBlock(nn.Module):
  """block_1 -> attn_1 -> block_2 at constant width; x [B,h,w,C] -> same."""
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, name="block_1", **kw)(x)
    x = AttnBlock(self.groups, name="attn_1", **kw)(x)
    return ResnetBlock(c, self.groups, name="block_2", **kw)(x)


class Encoder(nn.Module):
  """pixels [B,H,W,in_channels] -> [B,g,g,z_channels]. Attention only at the last level."""
  config: VQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = len(cfg.channel_mult)
    x = Conv(cfg.base_channels, name="conv_in", **kw)(x)
    for i, mult in enumerate(cfg.channel_mult):
      last = i == n - 1
      x = Level(cfg.base_channels * mult, cfg.num_res_blocks, cfg.norm_groups, attn=last,
                resample=None if last else "down", name=f"down_{i}", **kw)(x)
    x = MidBlock(cfg.norm_groups, name="mid", **kw)(x)
    x = swish(GroupNorm(cfg.norm_groups, name="norm_out", **kw)(x))
    return Conv(cfg.z_channels, name="conv_out", **kw)(x)


class Decoder(nn.Module):
  """z [B,g,g,z_channels] -> images [B,H,W,in_channels]. up_0 is the lowest resolution
  (widest, with attention); each level has num_res_blocks + 1 res blocks."""
  config: VQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = len(cfg.channel_mult)
    x = Conv(cfg.base_channels * cfg.channel_mult[-1], name="conv_in", **kw)(z)
    x = MidBlock(cfg.norm_groups, name="mid", **kw)(x)
    for j, mult in enumerate(reversed(cfg.channel_mult)):
      x = Level(cfg.base_channels * mult, cfg.num_res_blocks + 1, cfg.norm_groups, attn=j == 0,
                resample="up" if j < n - 1 else None, name=f"up_{j}", **kw)(x)
    x = swish(GroupNorm(cfg.norm_groups, name="norm_out", **kw)(x))
    return Conv(cfg.in_channels, name="conv_out", **kw)(x)


class Codebook(nn.Module):
  """The quantizer's table `embedding` [codebook_size, codebook_dim]; always used L2-normalised."""
  config: VQConfig
  param_dtype: Dtype = jnp.float32

  def setup(self):
    n = self.config.codebook_size
    # LlamaGen's init: uniform(-1/n, 1/n) (scale is irrelevant: rows are normalised on use).
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -1.0 / n, 1.0 / n)
    self.embedding = self.param("embedding", _wlp(init, ("codebook", None)),
                                (n, self.config.codebook_dim), self.param_dtype)

  def nearest(self, z):
    """z [..., d] -> int32 codes [...]: nearest unit-norm row to z/|z| (original Janus)."""
    z, e = l2_normalize(z), l2_normalize(self.embedding)
    dist = (jnp.sum(z * z, axis=-1, keepdims=True) + jnp.sum(e * e, axis=-1)
            - 2 * jnp.einsum("...d,nd->...n", z, e, precision=HIGHEST))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)

  def lookup(self, codes):
    """codes int [...] -> float32 [..., d] normalised codebook rows."""
    return jnp.take(l2_normalize(self.embedding), codes, axis=0)


class VQModel(nn.Module):
  """The VQ tokenizer. Use `apply(..., method=VQModel.encode / decode / encode_latents)`."""
  config: VQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(cfg, **kw)
    self.quant_conv = Conv(cfg.codebook_dim, kernel_size=1, **kw)
    self.quantize = Codebook(cfg, param_dtype=self.param_dtype)
    self.post_quant_conv = Conv(cfg.z_channels, kernel_size=1, **kw)
    self.decoder = Decoder(cfg, **kw)

  def encode_latents(self, pixels):
    """pixels [B,H,W,3] in [-1,1] -> pre-quantisation latents float32 [B,g,g,codebook_dim]."""
    return self.quant_conv(self.encoder(pixels)).astype(jnp.float32)

  def encode(self, pixels):
    """pixels [B,H,W,3] in [-1,1] -> codes int32 [B, g*g], row-major over (h, w)."""
    codes = self.quantize.nearest(self.encode_latents(pixels))
    return codes.reshape(codes.shape[0], -1)

  def decode(self, codes):
    """codes int [B, g*g] -> images float32 [B,H,W,3] (roughly in [-1,1])."""
    g = self.config.grid_size
    if codes.shape[-1] != g * g:
      raise ValueError(f"expected {g * g} codes per image (grid {g}x{g}), got {codes.shape}.")
    z = self.quantize.lookup(codes).reshape(codes.shape[0], g, g, self.config.codebook_dim)
    return self.decoder(self.post_quant_conv(z)).astype(jnp.float32)

  def train_forward(self, pixels, quantize: bool = True):
    """The training pass (janus_jax.train_vq): pixels -> (reconstruction, z, zq, codes).

    z: the L2-normalised latents [B,g,g,d]; zq: their nearest (normalised) codebook rows;
    the decoder sees z + stop_gradient(zq - z), the straight-through estimator, so its
    forward value is exactly `decode(codes)`. quantize False: the decoder sees z itself
    (an autoencoder warm-up before the codebook is seeded from the latents); it may be a
    traced bool, so one compiled step serves both phases.
    """
    z = l2_normalize(self.encode_latents(pixels))
    codes = self.quantize.nearest(z)
    zq = self.quantize.lookup(codes)
    latents = jnp.where(quantize, z + jax.lax.stop_gradient(zq - z), z)
    decoded = self.decoder(self.post_quant_conv(latents))
    return decoded.astype(jnp.float32), z, zq, codes.reshape(codes.shape[0], -1)

  def __call__(self, pixels):
    """Reconstruction pixels -> codes -> images; `init` through here creates every param."""
    return self.decode(self.encode(pixels))
