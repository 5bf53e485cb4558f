"""The original DeepSeek checkpoint layout (`convert.deepseek`), checked against the key
tables of the real Janus-Pro checkpoints and, numerically, against the transformers path.

The tables in /work/shared/reference/keys/ were dumped from the real checkpoints:
mapping_orig_to_hf_*.tsv has one row per (original key, transformers key, transformers
shape); a fused `attn.qkv` takes three rows whose transformers key carries a
"  [split dim0]" suffix, and dropped keys have "(dropped)" as their transformers key.
"""
from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from convert.deepseek import (DeepseekAsHF, config_from_deepseek, deepseek_to_hf_name,
                              detect_layout, hf_tensors_to_deepseek, hf_to_deepseek_name)
from janus_jax.config import TOKEN_FIELDS, JanusConfig

# The key tables of the released checkpoints live in shared/, beside the repository.
KEYS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                    "reference", "keys")
SIZES = ("1b", "7b")
SPLIT, DROPPED = "  [split dim0]", "(dropped)"


def _tsv(name: str) -> list[list[str]]:
  path = os.path.join(KEYS, name)
  if not os.path.exists(path):
    pytest.fail(f"{path} is missing: the key tables of shared/reference/keys must sit beside "
                "the repository")
  with open(path) as f:
    return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def _shape(text: str) -> tuple[int, ...]:
  return tuple(ast.literal_eval(text))


def _fake(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Zero-strided arrays of the right shapes: a 7B key set costs no memory."""
  return {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}


# --- the real checkpoints' key tables -----------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_names_reproduce_the_mapping_table(size):
  expected: dict[str, list[str] | None] = {}
  for orig, hf, _ in _tsv(f"mapping_orig_to_hf_pro_{size}.tsv"):
    if hf == DROPPED:
      expected[orig] = None
      continue
    hf = hf.removesuffix(SPLIT)
    expected.setdefault(orig, []).append(hf)
    assert hf_to_deepseek_name(hf) == orig, hf
  assert any(v is not None and len(v) == 3 for v in expected.values())   # the qkv rows
  # The table itself covers both state dicts exactly.
  assert set(expected) == {row[0] for row in _tsv(f"orig_janus_pro_{size}_state_dict.tsv")}
  assert {h for v in expected.values() for h in v or ()} == {
      row[0] for row in _tsv(f"hf_janus_pro_{size}_state_dict.tsv")}
  for orig, hf_names in expected.items():
    assert deepseek_to_hf_name(orig) == hf_names, orig


@pytest.mark.parametrize("size", SIZES)
def test_every_original_key_is_mapped_or_known_unused(size):
  orig = [row[0] for row in _tsv(f"orig_janus_pro_{size}_state_dict.tsv")]
  assert DeepseekAsHF(lambda key: None, keys=orig).unexpected() == []
  unused = [k for k in orig if deepseek_to_hf_name(k) is None]
  assert len(unused) == 14   # 13 attn_pool tensors + the codebook_used buffer
  assert detect_layout(orig) == "deepseek"


@pytest.mark.parametrize("size", SIZES)
def test_adapter_serves_exactly_the_hf_state_dict(size):
  orig = {row[0]: _shape(row[1]) for row in _tsv(f"orig_janus_pro_{size}_state_dict.tsv")}
  hf = {row[0]: _shape(row[1]) for row in _tsv(f"hf_janus_pro_{size}_state_dict.tsv")}
  adapter = DeepseekAsHF(_fake(orig))
  assert set(adapter.keys()) == set(hf) and len(adapter.keys()) == len(hf)
  assert adapter.unexpected() == []
  for key, shape in hf.items():
    assert adapter(key).shape == shape, key
  assert detect_layout(hf) == "hf"
  # A stray key is reported, not silently mapped.
  assert adapter.unexpected(["vision_model.vision_tower.head.weight"]) == [
      "vision_model.vision_tower.head.weight"]


def test_unknown_names():
  with pytest.raises(KeyError):
    deepseek_to_hf_name("model.layers.0.self_attn.q_proj.weight")
  assert hf_to_deepseek_name("language_model.model.norm.weight") is None


def test_detect_layout_rejects_a_plain_llama():
  llama = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
           "model.layers.0.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]
  with pytest.raises(ValueError, match="does not look like a Janus checkpoint"):
    detect_layout(llama)
  # An LLM wrapped as `language_model.*` alone is not enough either.
  with pytest.raises(ValueError, match="does not look like a Janus checkpoint"):
    detect_layout(["language_model." + k for k in llama])


# --- numerics: a tiny random transformers Janus in the original layout ---------------------
def _fake_unused(config) -> dict[str, np.ndarray]:
  w = config.vision.width
  pool = {"latent": (1, 1, w), "q.weight": (w, w), "kv.weight": (2 * w, w), "kv.bias": (2 * w,)}
  out = {f"vision_model.vision_tower.attn_pool.{k}": np.ones(s, np.float32)
         for k, s in pool.items()}
  out["gen_vision_model.quantize.codebook_used"] = np.ones(4 * config.vq.codebook_size, np.float32)
  return out


def test_deepseek_layout_loads_bit_identical_params(reference):
  from convert.hf import flax_shapes
  from convert.mapping import build_params, hf_rules
  _, model, config, hf_params = reference
  hf = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  orig = hf_tensors_to_deepseek(hf)
  assert not any("attn_pool" in k or "codebook_used" in k for k in orig)
  orig.update(_fake_unused(config))
  adapter = DeepseekAsHF(orig)
  assert adapter.unexpected() == []
  shapes = flax_shapes(config)
  params = flatten_dict(build_params(hf_rules(shapes), shapes, adapter))
  expected = flatten_dict(hf_params)
  assert params.keys() == expected.keys()
  for path, value in expected.items():
    assert params[path].dtype == value.dtype, path
    np.testing.assert_array_equal(params[path], value, err_msg=str(path))


def test_round_trip_and_views(reference):
  _, model, _, _ = reference
  hf = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  orig = hf_tensors_to_deepseek(hf)
  assert orig["vision_model.vision_tower.pos_embed"].shape[0] == 1
  assert len(orig) == len(hf) - 2 * sum("attn.qkv" in k for k in orig)
  adapter = DeepseekAsHF(orig)
  assert set(adapter.keys()) == set(hf)
  for key, value in hf.items():
    back = adapter(key)
    assert back.dtype == value.dtype and back.shape == value.shape, key
    np.testing.assert_array_equal(back, value, err_msg=key)
  # q/k/v are slices of the fused tensor, not copies.
  qkv = "vision_model.vision_tower.blocks.0.attn.qkv.weight"
  for x in "qkv":
    part = adapter(f"model.vision_model.encoder.layers.0.self_attn.{x}_proj.weight")
    assert np.shares_memory(part, orig[qkv])
  # Getter form (a lazy reader) works like a mapping.
  lazy = DeepseekAsHF(orig.__getitem__, keys=orig.keys())
  np.testing.assert_array_equal(lazy("lm_head.weight"), hf["lm_head.weight"])
  with pytest.raises(ValueError, match="q/k/v"):
    hf_tensors_to_deepseek({k: v for k, v in hf.items() if "layers.0.self_attn.k_proj" not in k})


# --- config.json -----------------------------------------------------------------------------
# Janus-Pro-7B's config.json, verbatim from JANUS.md §1.2.
PRO_7B = json.loads("""{
 "vision_config": {"cls": "CLIPVisionTower", "params": {"image_size": 384, "model_name": "siglip_large_patch16_384", "select_feature": "same", "select_layer": -1}},
 "aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "input_dim": 1024, "n_embed": 4096, "projector_type": "mlp_gelu"}},
 "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": 16384, "n_embed": 8}},
 "gen_aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "input_dim": 8, "n_embed": 4096, "projector_type": "mlp_gelu"}},
 "gen_head_config": {"cls": "vision_head", "params": {"image_token_embed": 4096, "image_token_size": 16384, "n_embed": 4096}},
 "language_config": {"max_position_embeddings": 16384, "model_type": "llama", "num_hidden_layers": 30, "torch_dtype": "bfloat16", "vocab_size": 102400},
 "model_type": "multi_modality", "torch_dtype": "bfloat16"
}""")


def _pro_1b() -> dict:
  cfg = json.loads(json.dumps(PRO_7B))
  cfg["language_config"].update(hidden_size=2048, intermediate_size=5632, num_attention_heads=16,
                                num_key_value_heads=16, num_hidden_layers=24, rms_norm_eps=1e-6)
  for section in ("aligner_config", "gen_aligner_config", "gen_head_config"):
    cfg[section]["params"]["n_embed"] = 2048
  cfg["gen_head_config"]["params"]["image_token_embed"] = 2048
  return cfg


@pytest.mark.parametrize("name,cfg", [("janus-pro-7b", PRO_7B), ("janus-pro-1b", _pro_1b())])
def test_config_matches_the_preset(name, cfg):
  preset = JanusConfig.preset(name)
  ours = config_from_deepseek(cfg, {})
  assert ours.llm == preset.llm
  assert ours.vision == preset.vision
  assert ours.vq == preset.vq
  assert ours.gen_head_dim == preset.gen_head_dim
  ids = {f: getattr(preset, f) for f in TOKEN_FIELDS}
  assert config_from_deepseek(cfg, ids) == preset


def test_config_errors_name_the_field():
  bad = json.loads(json.dumps(PRO_7B))
  bad["aligner_config"]["params"]["n_embed"] = 2048
  with pytest.raises(ValueError, match=r"aligner_config\.params\.n_embed"):
    config_from_deepseek(bad, {})
  bad = json.loads(json.dumps(PRO_7B))
  bad["gen_head_config"]["params"]["image_token_size"] = 8192
  with pytest.raises(ValueError, match=r"gen_head_config\.params\.image_token_size"):
    config_from_deepseek(bad, {})
  bad = json.loads(json.dumps(PRO_7B))
  bad["language_config"]["vocab_size"] = 1000   # the default token ids no longer fit
  with pytest.raises(ValueError, match="bos_token_id"):
    config_from_deepseek(bad, {})
  ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3, image_token_id=4, boi_token_id=5,
             eoi_token_id=6)
  assert config_from_deepseek(bad, ids).llm.vocab_size == 1000


def test_select_layer_truncates_the_tower():
  cfg = json.loads(json.dumps(PRO_7B))
  cfg["vision_config"]["params"]["select_layer"] = -2
  assert config_from_deepseek(cfg).vision.num_layers == 23
