"""Model configuration: frozen dataclasses with presets and a JSON round trip.

Every number of the released models lives here (JANUS.md §1.3); special token ids
are fields because they differ between checkpoints (JANUS.md §3.2, §9) — the
converter fills them from the checkpoint's tokenizer.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

_DTYPES = ("float32", "bfloat16", "float16")
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_id",
                "boi_token_id", "eoi_token_id")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_nothing")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """LLaMA-style decoder (DeepSeek-LLM)."""
  vocab_size: int = 102400
  hidden_size: int = 2048
  intermediate_size: int = 5632
  num_layers: int = 24
  num_heads: int = 16
  num_kv_heads: int = 16
  head_dim: int = 128
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  max_position_embeddings: int = 16384

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                       f"({self.num_kv_heads}) for grouped-query attention.")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """SigLIP ViT understanding encoder (no class token, no pooling head)."""
  image_size: int = 384
  patch_size: int = 16
  width: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  mlp_dim: int = 4096
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size "
                       f"{self.patch_size}.")
    if self.width % self.num_heads:
      raise ValueError(f"vision width {self.width} is not divisible by num_heads {self.num_heads}.")

  @property
  def num_patches(self) -> int:
    """Tokens per image: (image_size / patch_size)^2."""
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """LlamaGen VQ image tokenizer (VQ-16 for the released models)."""
  image_size: int = 384
  codebook_size: int = 16384
  codebook_dim: int = 8
  base_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 256
  in_channels: int = 3
  norm_groups: int = 32

  def __post_init__(self):
    object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
    for mult in self.channel_mult:
      if (self.base_channels * mult) % self.norm_groups:
        raise ValueError(f"VQ channel count {self.base_channels * mult} is not a multiple of "
                         f"norm_groups={self.norm_groups} (GroupNorm).")
    if self.image_size % self.downsample_factor:
      raise ValueError(f"VQ image_size {self.image_size} is not a multiple of the downsample "
                       f"factor {self.downsample_factor}.")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  @property
  def grid_size(self) -> int:
    """Side of the token grid: 24 for VQ-16 at 384 px."""
    return self.image_size // self.downsample_factor

  @property
  def num_tokens(self) -> int:
    return self.grid_size ** 2


@dataclasses.dataclass(frozen=True)
class JanusConfig:
  """The whole Janus model: LLM, understanding encoder, VQ tokenizer, adaptors and heads.

  `gen_head_dim` is the hidden width of the generation head (`image_token_embed` in the
  original config); the aligners map into the LLM width. Token ids are those of the
  checkpoint's tokenizer.
  """
  llm: LLMConfig = LLMConfig()
  vision: VisionConfig = VisionConfig()
  vq: VQConfig = VQConfig()
  gen_head_dim: int = 2048
  # Special tokens (looked up in the tokenizer by the converter).
  bos_token_id: int = 100000
  eos_token_id: int = 100001
  pad_token_id: int = 100002
  image_token_id: int = 100581
  boi_token_id: int = 100003
  eoi_token_id: int = 100004
  # Numerics and memory.
  dtype: str = "float32"          # compute dtype of matmuls and activations
  param_dtype: str = "float32"    # storage dtype of parameters
  remat_policy: str = "none"      # one of REMAT_POLICIES, for the scanned layer stacks
  scan_unroll: int = 1            # layers per iteration of the scanned stacks (>= num_layers:
                                  # no loop; faster training steps on the CPU, slower compiles)

  def __post_init__(self):
    for field in ("llm", "vision", "vq"):
      value = getattr(self, field)
      if isinstance(value, dict):
        cls = {"llm": LLMConfig, "vision": VisionConfig, "vq": VQConfig}[field]
        object.__setattr__(self, field, cls(**value))
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in _DTYPES:
        raise ValueError(f"{field}={getattr(self, field)!r}; choose one of {_DTYPES}.")
    for field in TOKEN_FIELDS:
      value = getattr(self, field)
      if not 0 <= value < self.llm.vocab_size:
        raise ValueError(f"{field}={value} is outside the vocabulary [0, {self.llm.vocab_size}); "
                         "take the special-token ids from the checkpoint's tokenizer.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}.")
    if not (isinstance(self.scan_unroll, int) and self.scan_unroll >= 1):
      raise ValueError(f"scan_unroll={self.scan_unroll!r}; it is a whole number of layers >= 1 "
                       "(1: a loop over the layers; num_layers or more: no loop).")

  @property
  def num_image_tokens(self) -> int:
    """Understanding tokens per image (576 for SigLIP-L/16@384)."""
    return self.vision.num_patches

  def replace(self, **changes: Any) -> "JanusConfig":
    return dataclasses.replace(self, **changes)

  # --- serialisation -------------------------------------------------------------------
  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self, path=None) -> str:
    text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
    if path is not None:
      with open(path, "w") as f:
        f.write(text + "\n")
    return text

  @classmethod
  def from_dict(cls, data: dict) -> "JanusConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
      raise ValueError(f"unknown JanusConfig fields {sorted(unknown)}; known: {sorted(known)}.")
    return cls(**data)

  @classmethod
  def from_json(cls, path_or_text: str) -> "JanusConfig":
    text = path_or_text
    if not path_or_text.lstrip().startswith("{"):
      with open(path_or_text) as f:
        text = f.read()
    return cls.from_dict(json.loads(text))

  @classmethod
  def preset(cls, name: str) -> "JanusConfig":
    if name not in PRESETS:
      raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]


def _pro_7b() -> JanusConfig:
  return JanusConfig(
      llm=LLMConfig(hidden_size=4096, intermediate_size=11008, num_layers=30, num_heads=32,
                    num_kv_heads=32),
      gen_head_dim=4096,
      # Janus-Pro-7B's tokenizer places the added tokens differently (JANUS.md §3.2);
      # the converter overwrites these from the checkpoint's tokenizer.
      pad_token_id=100015, boi_token_id=100016, eoi_token_id=100017, image_token_id=100594)


PRESETS: dict[str, JanusConfig] = {
    "janus-1.3b": JanusConfig(pad_token_id=100015, boi_token_id=100016, eoi_token_id=100017),
    "janus-pro-1b": JanusConfig(),
    "janus-pro-7b": _pro_7b(),
    # Small enough for CPU tests; channel counts stay multiples of 32 for GroupNorm.
    "tiny": JanusConfig(
        llm=LLMConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=2048),
        vision=VisionConfig(image_size=32, patch_size=8, width=64, num_layers=2, num_heads=4,
                            mlp_dim=128),
        vq=VQConfig(image_size=32, codebook_size=256, codebook_dim=8, base_channels=32,
                    channel_mult=(1, 2), num_res_blocks=1, z_channels=32),
        gen_head_dim=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, image_token_id=4, boi_token_id=5,
        eoi_token_id=6),
}
