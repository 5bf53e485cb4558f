"""python -m convert.components --llm DIR --siglip DIR --vq FILE DST [--seed N] [--dtype ...]

Assembles a Janus checkpoint directory for Stage-I training from its pretrained parts
(JANUS.md §1.1, §6.2): a transformers `LlamaForCausalLM` directory (DeepSeek-LLM), a
transformers `SiglipVisionModel` (or full `SiglipModel`) directory whose MAP head (and
text tower) is dropped, and a LlamaGen VQ checkpoint file (a torch pickle whose `model`
entry is the VQ state dict under the original `gen_vision_model.*` names without that
prefix). The aligner, gen_aligner, gen_head and gen_embed are initialised fresh from a
seed with our own init. The result is the same kind of directory `python -m convert`
writes (Orbax params + config.json + the LLM's tokenizer files).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Callable

import numpy as np

from convert import mapping
from convert.deepseek import DeepseekAsHF, _llm, hf_to_deepseek_name
from convert.hf import TOKEN_TAGS, flax_shapes, tokenizer_ids
from convert.readers import FLOAT_DTYPES, TensorSource
from janus_jax.config import JanusConfig, VisionConfig, VQConfig
from janus_jax.errors import CheckpointError

# Subtrees of the Janus param tree that no component provides: initialised from --seed.
FRESH = ("aligner", "gen_aligner", "gen_head", "gen_embed")

_VQ_PREFIX = "gen_vision_model."
_LLM_PREFIX, _HF_LLM = "model.", "model.language_model."
_HF_VISION = "model.vision_model."
# Buffers that older transformers Llama checkpoints saved; recomputed by every model.
_LLM_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
# transformers SiglipVisionConfig defaults (a 4.x config.json omits fields at their default).
_SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
_JANUS_TAGS = ("pad_token_id", "image_token_id", "boi_token_id", "eoi_token_id")


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} does not exist; each component directory needs the "
                          "config.json that transformers' save_pretrained writes.")
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


# --- configs ------------------------------------------------------------------------------------
def llm_config(directory: str):
  """LLMConfig from a transformers Llama config.json (rope_theta flat or in rope_parameters)."""
  path = os.path.join(directory, "config.json")
  raw = _read_json(path)
  cfg = dict(raw)
  rope = cfg.pop("rope_parameters", None) or {}
  if rope:
    if rope.get("rope_type", "default") != "default":
      raise CheckpointError(f"{path}: rope_parameters.rope_type={rope.get('rope_type')!r}; "
                            "Janus' LLM uses plain RoPE (rope_type 'default').")
    cfg.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
  if cfg.get("rope_theta") is None:
    cfg.pop("rope_theta", None)
  try:
    return _llm({"language_config": cfg}), raw
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: not a usable Llama config ({e}).") from None


def siglip_config(directory: str, image_size: int | None = None):
  """(VisionConfig, hidden_act, the checkpoint's own image size) from a SigLIP config.json."""
  path = os.path.join(directory, "config.json")
  raw = _read_json(path)
  if raw.get("model_type") == "siglip":          # a full SiglipModel: use its vision tower
    raw = raw.get("vision_config") or {}
  if raw.get("model_type", "siglip_vision_model") != "siglip_vision_model":
    raise CheckpointError(f"{path}: model_type={raw.get('model_type')!r}; expected a "
                          "transformers SiglipVisionModel (or SiglipModel) config.")
  cfg = {**_SIGLIP_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
  if cfg["num_channels"] != 3:
    raise CheckpointError(f"{path}: num_channels={cfg['num_channels']}; Janus takes RGB images.")
  try:
    vision = VisionConfig(
        image_size=image_size or cfg["image_size"], patch_size=cfg["patch_size"],
        width=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
        layer_norm_eps=cfg["layer_norm_eps"])
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot build the vision config ({e}).") from None
  if cfg["image_size"] % cfg["patch_size"]:
    raise CheckpointError(f"{path}: image_size {cfg['image_size']} is not a multiple of "
                          f"patch_size {cfg['patch_size']}.")
  return vision, cfg["hidden_act"], cfg["image_size"]


def vq_config(keys: dict[str, tuple], image_size: int, path: str) -> VQConfig:
  """LlamaGen VQ sizes read off the tensor shapes (original names, no prefix).

  VQ-16 gives base 128, channel_mult (1, 1, 2, 2, 4), 2 res blocks, z 256, codebook
  16384 x 8; smaller VQs are accepted as long as they follow the same structure.
  """
  def shape(key):
    if key not in keys:
      raise CheckpointError(f"{path}: tensor {key!r} is missing; expected a LlamaGen VQ state "
                            "dict (encoder.*, quantize.embedding.weight, decoder.*, ...).")
    return keys[key]

  base, in_channels = shape("encoder.conv_in.weight")[:2]
  levels = sorted({int(m.group(1)) for k in keys
                   if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))})
  if not levels or levels != list(range(len(levels))):
    raise CheckpointError(f"{path}: cannot find the encoder levels encoder.conv_blocks.<i>.*")
  mult = []
  for i in levels:
    width = shape(f"encoder.conv_blocks.{i}.res.0.conv1.weight")[0]
    if width % base:
      raise CheckpointError(f"{path}: encoder level {i} has {width} channels, not a multiple of "
                            f"the base {base}")
    mult.append(width // base)
  res = {int(m.group(1)) for k in keys
         if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))}
  codebook_size, codebook_dim = shape("quantize.embedding.weight")
  try:
    return VQConfig(image_size=image_size, codebook_size=codebook_size, codebook_dim=codebook_dim,
                    base_channels=base, channel_mult=tuple(mult), num_res_blocks=len(res),
                    z_channels=shape("encoder.conv_out.weight")[0], in_channels=in_channels)
  except ValueError as e:
    raise CheckpointError(f"{path}: unsupported VQ sizes ({e}).") from None


def token_ids(directory: str, llama: dict, vocab_size: int) -> dict[str, int]:
  """Special-token ids from the LLM's tokenizer.json; bos/eos may come from config.json."""
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory} has no tokenizer.json; the LLM directory must hold the "
                          "(fast) tokenizer with Janus' added tokens.")
  try:
    ids = tokenizer_ids(directory)
  except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from None
  for field in ("bos_token_id", "eos_token_id"):
    if field not in ids and isinstance(llama.get(field), int):
      ids[field] = llama[field]
  missing = [TOKEN_TAGS[f] for f in _JANUS_TAGS if f not in ids]
  missing += [f for f in ("bos_token_id", "eos_token_id") if f not in ids]
  if missing:
    raise CheckpointError(
        f"{path} lacks {', '.join(missing)}: Janus needs these added tokens. Add them, e.g. "
        "tok = AutoTokenizer.from_pretrained(DIR); tok.add_special_tokens({'pad_token': "
        f"'{TOKEN_TAGS['pad_token_id']}', 'additional_special_tokens': ['<image_placeholder>', "
        "'<begin_of_image>', '<end_of_image>']}); tok.save_pretrained(DIR) (their ids must stay "
        f"below the LLM's vocab_size {vocab_size}).")
  for field, value in ids.items():
    if not 0 <= value < vocab_size:
      raise CheckpointError(f"{path}: {field.replace('_id', '')} has id {value}, outside the "
                            f"LLM's embedding table of {vocab_size} rows.")
  return ids


# --- position-embedding resampling -------------------------------------------------------------
def _cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's bicubic interpolation (A=-0.75, align_corners=False)."""
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1            # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a        # 1 < |x| < 2
  out = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = (i + 0.5) * n_in / n_out - 0.5
    f = math.floor(src)
    t = src - f
    for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
      out[i, min(max(f + offset, 0), n_in - 1)] += w
  return out


def resample_pos_embed(table: np.ndarray, grid: int) -> np.ndarray:
  """Square position table [g*g, W] -> [grid*grid, W], as transformers SigLIP's
  `interpolate_pos_encoding` (bicubic, align_corners=False) does."""
  old = math.isqrt(table.shape[0])
  m = _cubic_matrix(old, grid)
  x = np.asarray(table, np.float64).reshape(old, old, -1)
  x = np.einsum("ai,bj,ijw->abw", m, m, x)
  return x.reshape(grid * grid, -1).astype(np.float32)


# --- tensors ------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Tensor:
  """One tensor of one component, served under its transformers-Janus name."""
  part: str
  path: str
  key: str                      # the name in the component's own checkpoint
  shape: tuple[int, ...]
  dtype: str
  read: Callable[[], np.ndarray]


class _VQFile:
  """The VQ state dict of a LlamaGen `.pt` (torch pickle, read safely) or a safetensors file,
  served under `gen_vision_model.*` names."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise CheckpointError(f"{path} is not a file; --vq takes the LlamaGen VQ checkpoint file "
                            "(e.g. vq_ds16_t2i.pt).")
    self.path = path
    if path.endswith(".safetensors"):
      from convert.readers import _SafetensorsFile
      self._file = _SafetensorsFile(path)
      dtype = self._file.dtype
    else:
      from convert.torch_pickle import TorchBinFile
      try:
        self._file = TorchBinFile(path)
      except CheckpointError as e:
        hint = ""
        if "argparse" in str(e):
          hint = (" (LlamaGen training checkpoints also pickle their argparse args; if you "
                  "trust the file, keep only the weights: torch.save({'model': torch.load(FILE, "
                  "weights_only=False)['model']}, NEW))")
        raise CheckpointError(f"{e}{hint}") from None
      dtype = lambda k: np.dtype(self._file.dtype(k)).name
    self._dtype = dtype
    keys = list(self._file.keys())
    # Accept names with or without the prefix the Janus checkpoints put on them.
    self._prefixed = bool(keys) and all(k.startswith(_VQ_PREFIX) for k in keys)
    self._own = {k if self._prefixed else _VQ_PREFIX + k: k for k in keys}

  def own_name(self, key: str) -> str:
    return self._own.get(key, key if self._prefixed else key.removeprefix(_VQ_PREFIX))

  def keys(self):
    return self._own.keys()

  def shape(self, key):
    return tuple(self._file.shape(self._own[key]))

  def dtype(self, key):
    return self._dtype(self._own[key])

  def __call__(self, key):
    return self._file(self._own[key])

  def release_pages(self) -> None:
    if hasattr(self._file, "release_pages"):
      self._file.release_pages()

  def unprefixed_shapes(self) -> dict[str, tuple]:
    return {k.removeprefix(_VQ_PREFIX): self.shape(k) for k in self._own}


def _llm_tensors(source: TensorSource, directory: str, tied: bool, out: dict, unexpected: list):
  for key in source.keys():
    if _LLM_IGNORED.fullmatch(key):
      continue
    if key.startswith(_LLM_PREFIX):
      name = _HF_LLM + key[len(_LLM_PREFIX):]
    elif key == "lm_head.weight":
      name = key
    else:
      unexpected.append(("LLM", directory, key))
      continue
    out[name] = _Tensor("LLM", directory, key, tuple(source.shape(key)), source.dtype(key),
                        lambda key=key: source(key))
  embed = out.get(_HF_LLM + "embed_tokens.weight")
  if tied and "lm_head.weight" not in out and embed is not None:
    out["lm_head.weight"] = embed       # tied: the output matrix is the embedding table


def _siglip_prefix(keys) -> str:
  return "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""


def _siglip_tensors(source: TensorSource, directory: str, grid: int | None, out: dict,
                    unexpected: list) -> int:
  """Adds the SigLIP tensors; returns how many were dropped (MAP head, text tower)."""
  prefix = _siglip_prefix(source.keys())
  dropped = 0
  for key in source.keys():
    if key.startswith("text_model.") or key in ("logit_scale", "logit_bias"):
      dropped += 1                # the text tower of a full SiglipModel
      continue
    if not key.startswith(prefix):
      unexpected.append(("SigLIP", directory, key))
      continue
    rest = key[len(prefix):]
    if rest.startswith("head."):  # the MAP head: Janus uses the token sequence (JANUS.md §2.1)
      dropped += 1
      continue
    name = _HF_VISION + rest.replace("self_attn.out_proj.", "self_attn.projection_layer.")
    shape, read = tuple(source.shape(key)), (lambda key=key: source(key))
    if rest == "embeddings.position_embedding.weight" and grid is not None and len(shape) == 2 \
        and shape[0] != grid * grid and math.isqrt(shape[0]) ** 2 == shape[0]:
      shape, read = (grid * grid, shape[1]), (lambda key=key: resample_pos_embed(source(key), grid))
    out[name] = _Tensor("SigLIP", directory, key, shape, source.dtype(key), read)
  return dropped


def _vq_tensors(vq: _VQFile, out: dict, unexpected: list):
  served = DeepseekAsHF(vq)
  for name in served.keys():
    original = served.source_key(name)
    out[name] = _Tensor("VQ", vq.path, vq.own_name(original), served.shape(name),
                        served.dtype(name), lambda name=name: served(name))
  unexpected += [("VQ", vq.path, vq.own_name(k)) for k in served.unexpected()]


def _their_name(hf_key: str, siglip_prefix: str, vq: _VQFile) -> tuple[str, str]:
  """(component, name in the component's checkpoint) of an expected tensor."""
  if hf_key.startswith(_HF_LLM) or hf_key == "lm_head.weight":
    return "LLM", (_LLM_PREFIX + hf_key[len(_HF_LLM):] if hf_key.startswith(_HF_LLM) else hf_key)
  if hf_key.startswith(_HF_VISION):
    rest = hf_key[len(_HF_VISION):].replace("self_attn.projection_layer.", "self_attn.out_proj.")
    return "SigLIP", siglip_prefix + rest
  return "VQ", vq.own_name(hf_to_deepseek_name(hf_key) or hf_key)


# --- the plan -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
  config: JanusConfig
  rules: list                   # rules of the parameters read from the components
  shapes: dict
  tensors: dict                 # transformers-Janus name -> _Tensor
  sources: dict                 # "LLM"/"SigLIP"/"VQ" -> path
  seed: int
  warnings: list
  dropped: int
  size_bytes: int
  readers: list = dataclasses.field(default_factory=list)   # the open files

  def release_pages(self) -> None:
    for reader in self.readers:
      if hasattr(reader, "release_pages"):
        reader.release_pages()

  def get(self, hf_key: str) -> np.ndarray:
    return self.tensors[hf_key].read()


def plan(llm: str, siglip: str, vq: str, seed: int = 0, dtype: str = "bfloat16",
         vision_image_size: int | None = None) -> Plan:
  """Reads and checks the three components; raises CheckpointError on any problem."""
  if dtype not in ("bfloat16", "float32"):
    raise CheckpointError(f"--dtype {dtype!r}: choose bfloat16 or float32.")
  for flag, directory in (("--llm", llm), ("--siglip", siglip)):
    if not os.path.isdir(directory):
      raise CheckpointError(f"{flag} {directory} is not a directory; pass the folder that "
                            "transformers' save_pretrained wrote (config.json + weights).")
  llm_cfg, llama = llm_config(llm)
  vision, act, own_size = siglip_config(siglip, vision_image_size)
  warnings = []
  if act != "gelu":
    warnings.append(f"SigLIP hidden_act={act!r} differs from the exact (erf) GELU of Janus' "
                    "vision tower; converting anyway (Janus trains on top of it).")
  vq_file = _VQFile(vq)
  vq_cfg = vq_config(vq_file.unprefixed_shapes(), vision.image_size, vq)
  ids = token_ids(llm, llama, llm_cfg.vocab_size)
  try:
    config = JanusConfig(llm=llm_cfg, vision=vision, vq=vq_cfg, gen_head_dim=llm_cfg.hidden_size,
                         dtype=dtype, param_dtype=dtype, **ids)
  except ValueError as e:
    raise CheckpointError(f"cannot assemble the Janus config: {e}") from None

  llm_source, siglip_source = TensorSource(llm), TensorSource(siglip)
  tensors, unexpected = {}, []
  _llm_tensors(llm_source, llm, bool(llama.get("tie_word_embeddings")), tensors, unexpected)
  grid = vision.image_size // vision.patch_size if vision.image_size != own_size else None
  dropped = _siglip_tensors(siglip_source, siglip, grid, tensors, unexpected)
  _vq_tensors(vq_file, tensors, unexpected)

  shapes = flax_shapes(config)
  rules = mapping.hf_rules(shapes)
  mapping.check_rules_cover(rules, shapes)
  rules = [r for r in rules if r.ours[0] not in FRESH]
  prefix = _siglip_prefix(siglip_source.keys())
  expected = {}
  for r in rules:
    names = ([r.theirs.format(i=i) for i in range(shapes[r.ours][0])] if r.stacked
             else [r.theirs])
    expected.update(dict.fromkeys(names, mapping.torch_shape(r, shapes[r.ours])))
  sources = {"LLM": llm, "SigLIP": siglip, "VQ": vq}
  for name, shape in expected.items():
    t = tensors.get(name)
    if t is None:
      part, theirs = _their_name(name, prefix, vq_file)
      raise CheckpointError(f"{sources[part]}: tensor {theirs!r} is missing; is this the "
                            f"{part} checkpoint its config.json describes?")
    if t.shape != shape:
      raise CheckpointError(f"{t.path}: tensor {t.key!r} has shape {t.shape}, the {t.part} "
                            f"config implies {shape}.")
    if t.dtype not in FLOAT_DTYPES:
      raise CheckpointError(f"{t.path}: tensor {t.key!r} has dtype {t.dtype}; weights must be "
                            f"one of {FLOAT_DTYPES}.")
  unexpected += [(t.part, t.path, t.key) for n, t in tensors.items() if n not in expected]
  if unexpected:
    part, path, key = unexpected[0]
    raise CheckpointError(f"{path}: unexpected tensor {key!r} ({len(unexpected)} in all); is it "
                          f"the {part} checkpoint described by its config.json?")
  size = llm_source.size_bytes + siglip_source.size_bytes + os.path.getsize(vq)
  return Plan(config, rules, shapes, tensors, sources, seed, warnings, dropped, size,
              [llm_source, siglip_source, vq_file])


# --- fresh parameters ---------------------------------------------------------------------------
def fresh_params(config: JanusConfig, seed: int) -> dict:
  """The FRESH subtrees with our init, exactly as `init_params(config, key(seed))` makes them,
  without computing the rest of the model (`init_params(exclude=...)`)."""
  import jax
  from janus_jax.model import abstract_params, init_params
  rest = tuple(k for k in abstract_params(config) if k not in FRESH)
  return jax.device_get(init_params(config, jax.random.key(seed), exclude=rest))


def iter_params(p: Plan, progress: bool = False, reuse_buffer: bool = False):
  """(Flax path, numpy array): every parameter read from the components, then the fresh ones.

  reuse_buffer: each array read from a component is a view into one buffer, valid until
  the next one is yielded (see `convert.pipeline.iter_params`).
  """
  from flax.traverse_util import flatten_dict
  from tqdm import tqdm
  import jax.numpy as jnp
  target = np.dtype(jnp.dtype(p.config.param_dtype))
  scratch = (np.empty(mapping.max_param_bytes({r.ours: p.shapes[r.ours] for r in p.rules},
                                              target), np.uint8) if reuse_buffer else None)
  items = mapping.iter_params(p.rules, p.shapes, p.get, target, scratch)
  try:
    for item in tqdm(items, total=len(p.rules), desc="tensors", unit="param",
                     disable=not progress, dynamic_ncols=True):
      p.release_pages()          # the output owns its memory; the source pages can go
      yield item
  except CheckpointError:
    raise
  except (KeyError, ValueError) as e:   # passed the checks but cannot be laid out
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise CheckpointError(f"{message} (components {', '.join(p.sources.values())})") from e
  del scratch
  for path, array in flatten_dict(fresh_params(p.config, p.seed)).items():
    yield path, np.asarray(array, target)


def load_components(llm: str, siglip: str, vq: str, seed: int = 0, dtype: str = "float32",
                    vision_image_size: int | None = None):
  """(JanusConfig, nested numpy params) in memory, without writing anything."""
  from flax.traverse_util import unflatten_dict
  p = plan(llm, siglip, vq, seed, dtype, vision_image_size)
  return p.config, unflatten_dict(dict(iter_params(p)))


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr)


def convert_components(llm: str, siglip: str, vq: str, dst: str, seed: int = 0,
                       dtype: str = "bfloat16", overwrite: bool = False,
                       vision_image_size: int | None = None, progress: bool = True,
                       warn: Callable[[str], None] = _warn) -> dict:
  """Writes the assembled checkpoint directory `dst` (atomically). Returns a summary."""
  from flax.traverse_util import unflatten_dict
  from janus_jax import checkpoint
  from convert.pipeline import _check_destination
  start = time.perf_counter()
  for source in (llm, siglip, os.path.dirname(os.path.abspath(vq))):
    _check_destination(source, dst, overwrite)   # before reading anything
  p = plan(llm, siglip, vq, seed, dtype, vision_image_size)
  for message in p.warnings:
    warn(message)
  with checkpoint.atomic_directory(dst, overwrite) as tmp:
    writer = checkpoint.ParamsWriter(tmp)
    groups: dict[str, dict] = {}
    for path, array in iter_params(p, progress=progress, reuse_buffer=True):
      if path[0] == "llm":          # the big ones: one write each
        writer.add(unflatten_dict({path: array}))
      else:                         # many small ones: one write per module
        groups.setdefault(path[0], {})[path] = array.copy()   # the buffer is reused
      del array
    for group in groups.values():
      writer.add(unflatten_dict(group))
    written = writer.close()
    checkpoint.write_sidecars(tmp, p.config, llm)
  return dict(destination=dst, sources=p.sources, dtype=p.config.param_dtype, seed=seed,
              params=sum(int(np.prod(s)) for s in p.shapes.values()), bytes=written,
              source_bytes=p.size_bytes, dropped=p.dropped, warnings=p.warnings,
              seconds=time.perf_counter() - start)


def main(argv=None) -> int:
  from convert.cli import run
  parser = argparse.ArgumentParser(prog="python -m convert.components",
                                   description=__doc__.split("\n\n")[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--llm", required=True, help="transformers LlamaForCausalLM directory "
                      "(DeepSeek-LLM) with a tokenizer.json holding Janus' added tokens")
  parser.add_argument("--siglip", required=True, help="transformers SiglipVisionModel or "
                      "SiglipModel directory (SigLIP-L/16@384)")
  parser.add_argument("--vq", required=True, help="LlamaGen VQ checkpoint file (torch pickle "
                      "with a 'model' state dict, or .safetensors)")
  parser.add_argument("dst", help="output directory (must not exist unless --overwrite)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the fresh aligner, "
                      "gen_aligner, gen_head and gen_embed (default 0)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                      help="parameter dtype of the written checkpoint (default bfloat16)")
  parser.add_argument("--vision-image-size", type=int, default=None,
                      help="understanding (and generation) image size; default the SigLIP "
                      "config's. Another size resamples the position table bicubically.")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args(argv)

  def job():
    s = convert_components(args.llm, args.siglip, args.vq, args.dst, args.seed, args.dtype,
                           args.overwrite, args.vision_image_size, progress=not args.quiet)
    return (f"wrote {s['destination']}: {s['params']:,} params ({s['bytes'] / 1e9:.2f} GB "
            f"{s['dtype']}) from LLM {args.llm}, SigLIP {args.siglip} ({s['dropped']} head/text "
            f"tensors dropped), VQ {args.vq}; aligner, gen_aligner, gen_head and gen_embed "
            f"initialised from seed {s['seed']}; {s['seconds']:.1f} s")
  return run(job)


if __name__ == "__main__":
  sys.exit(main())
