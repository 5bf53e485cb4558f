"""Config presets, JSON round trip, validation, and full-size parameter counts."""
import jax
import numpy as np
import pytest

import janus_jax
from janus_jax import JanusConfig


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["tiny", "janus-1.3b", "janus-pro-1b", "janus-pro-7b"])
def test_json_round_trip(name, tmp_path):
  config = JanusConfig.preset(name).replace(dtype="bfloat16", remat_policy="dots")
  path = tmp_path / "config.json"
  config.to_json(path)
  assert JanusConfig.from_json(str(path)) == config
  assert JanusConfig.from_json(config.to_json()) == config


def test_bad_configs_are_refused_with_the_fix_named():
  with pytest.raises(ValueError, match="num_kv_heads"):
    janus_jax.LLMConfig(num_heads=6, num_kv_heads=4)
  with pytest.raises(ValueError, match="tokenizer"):
    JanusConfig.preset("tiny").replace(image_token_id=10**6)
  with pytest.raises(ValueError, match="dtype"):
    JanusConfig.preset("tiny").replace(dtype="float64")
  with pytest.raises(ValueError, match="unknown preset"):
    JanusConfig.preset("janus-pro-70b")
  with pytest.raises(ValueError, match="unknown JanusConfig fields"):
    JanusConfig.from_dict({"hidden": 3})
  with pytest.raises(ValueError, match="GroupNorm"):
    janus_jax.VQConfig(base_channels=48)
  with pytest.raises(ValueError, match="scan_unroll"):
    JanusConfig.preset("tiny").replace(scan_unroll=0)


# Released checkpoints minus the unused `attn_pool.*` (12,595,200) and `codebook_used` (65,536).
@pytest.mark.parametrize("name,total,d_counts", [
    ("janus-pro-1b", 2_076_636_811,
     dict(aligner=6_295_552, gen_aligner=4_214_784, gen_head=37_767_168,
          embed=209_715_200, layers=1_233_225_728)),
    ("janus-pro-7b", 7_407_773_323,
     dict(aligner=20_979_712, gen_aligner=16_818_176, gen_head=83_906_560,
          embed=419_430_400, layers=6_071_504_896)),
])
def test_full_size_parameter_counts_match_released_checkpoints(name, total, d_counts):
  tree = janus_jax.abstract_params(JanusConfig.preset(name))
  assert _count(tree) == total
  assert _count(tree["vision"]) == 303_688_704
  vq = tree["vq"]
  assert _count([vq["encoder"], vq["quant_conv"]]) == 29_300_232
  assert _count([vq["decoder"], vq["post_quant_conv"]]) == 42_452_099
  assert _count(vq["quantize"]) == 131_072
  assert _count(tree["gen_embed"]) == 131_072
  for part in ("aligner", "gen_aligner", "gen_head"):
    assert _count(tree[part]) == d_counts[part]
  llm = tree["llm"]
  assert _count(llm["embed"]) == d_counts["embed"] == _count(llm["lm_head"])
  assert _count([llm["layers"], llm["final_norm"]]) == d_counts["layers"]
