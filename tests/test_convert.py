"""The converter: every layout and file format in, Orbax out, same numbers as the reference;
and the way back out, bit for bit."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import janus_jax
from janus_jax import Janus
from convert.pipeline import convert
from tests import checkpoints, reference as ref

ATOL = 1e-4   # float32, outputs O(1)


@pytest.fixture(scope="module")
def hf_model():
  return ref.build_hf_model(ref.GQA, seed=3)


@pytest.fixture(scope="module")
def reference_outputs(hf_model):
  """Logits (image merged, left padding), image features and VQ pixels from transformers."""
  v = ref.GQA
  g = torch.Generator().manual_seed(0)
  p = v.num_image_tokens
  ids = torch.randint(10, v.vocab, (2, p + 9), generator=g)
  ids[:, 3:3 + p] = ref.TOKENS["image_token_id"]
  mask = torch.ones_like(ids)
  mask[1, :2] = 0
  pixels = torch.rand((2, 3, v.vision_image, v.vision_image), generator=g) * 2 - 1
  codes = torch.randint(0, v.vq_codebook, (2, (v.vision_image // v.vision_patch) ** 2), generator=g)
  with torch.no_grad():
    logits = hf_model(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
    features = hf_model.model.get_image_features(pixels).pooler_output.numpy()
    images = hf_model.decode_image_tokens(codes).numpy()
  inputs = dict(ids=ids.numpy(), mask=mask.numpy(), pixels=ref.to_nhwc(pixels), codes=codes.numpy())
  return inputs, dict(logits=logits, features=features, images=images)


def _check_against_reference(directory, reference_outputs):
  inputs, want = reference_outputs
  loaded = janus_jax.load(directory, dtype="float32")
  apply = lambda *a, method=None: np.asarray(
      loaded.model.apply({"params": loaded.params}, *a, method=method))
  logits = apply(jnp.asarray(inputs["ids"]), jnp.asarray(inputs["pixels"])[:, None],
                 jnp.asarray(inputs["mask"]))
  valid = inputs["mask"].astype(bool)
  assert np.max(np.abs(logits - want["logits"])[valid]) <= ATOL
  features = apply(jnp.asarray(inputs["pixels"]), method=Janus.image_features)
  assert np.max(np.abs(features - want["features"])) <= ATOL
  images = apply(jnp.asarray(inputs["codes"]), method=Janus.decode_codes)
  assert np.max(np.abs(images - want["images"])) <= ATOL
  return loaded


SOURCES = [("hf", "safetensors", 1), ("hf", "safetensors", 3), ("hf", "bin", 1),
           ("deepseek", "safetensors", 1), ("deepseek", "bin", 1), ("deepseek", "bin", 2)]


@pytest.mark.parametrize("layout,fmt,shards", SOURCES)
def test_every_layout_and_format_converts_to_reference_numbers(
    layout, fmt, shards, hf_model, reference_outputs, tmp_path):
  src = str(tmp_path / "src")
  (checkpoints.write_hf if layout == "hf" else checkpoints.write_deepseek)(
      hf_model, src, fmt, shards)
  summary = convert(src, str(tmp_path / "dst"), dtype="float32", progress=False)
  assert summary["layout"] == layout
  loaded = _check_against_reference(str(tmp_path / "dst"), reference_outputs)
  assert loaded.config.image_token_id == ref.TOKENS["image_token_id"]
  assert os.path.isfile(tmp_path / "dst" / "tokenizer.json")
  # The PyTorch directory also loads directly, converted on the fly.
  _check_against_reference(src, reference_outputs)


def test_cli_converts_and_prints_a_summary(hf_model, tmp_path):
  src = checkpoints.write_deepseek(hf_model, str(tmp_path / "src"), "bin", 2)
  out = subprocess.run([sys.executable, "-m", "convert", src, str(tmp_path / "dst"), "--quiet"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 0, out.stderr
  assert "wrote" in out.stdout and "deepseek-layout" in out.stdout
  config = json.load(open(tmp_path / "dst" / "config.json"))
  assert config["param_dtype"] == "bfloat16"


def _safetensors_dir(directory):
  from safetensors.numpy import load_file
  files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
  out = {}
  for f in files:
    out.update(load_file(os.path.join(directory, f)))
  return out


@pytest.mark.parametrize("layout", ["hf", "deepseek"])
def test_round_trip_is_bit_exact(layout, hf_model, tmp_path):
  from convert.export import export
  src = str(tmp_path / "src")
  torch_dtype = torch.bfloat16 if layout == "deepseek" else None   # the 7B ships in bf16
  if layout == "hf":
    checkpoints.write_hf(hf_model, src, "safetensors", 2)
    want = checkpoints.state_dict_numpy(hf_model)
  else:
    checkpoints.write_deepseek(hf_model, src, "bin", 2, torch_dtype=torch_dtype)
    want = {k: v for k, v in checkpoints.deepseek_tensors(hf_model).items()
            if "attn_pool" not in k and "codebook_used" not in k}   # unused: dropped on purpose
  dtype = "bfloat16" if torch_dtype is not None else "float32"
  convert(src, str(tmp_path / "orbax"), dtype=dtype, progress=False)
  export(str(tmp_path / "orbax"), str(tmp_path / "out"), layout, shard_bytes=200_000)
  got = _safetensors_dir(tmp_path / "out")
  assert os.path.isfile(tmp_path / "out" / "model.safetensors.index.json")   # sharded
  assert set(got) == set(want)
  for key, array in want.items():
    if torch_dtype is not None:
      array = torch.from_numpy(array).to(torch_dtype).float().numpy()
    assert got[key].shape == array.shape, key
    np.testing.assert_array_equal(got[key].astype(np.float32), array, err_msg=key)


def test_hf_export_loads_in_transformers_with_the_same_logits(hf_model, reference_outputs,
                                                              tmp_path):
  from convert.export import export
  from transformers import JanusForConditionalGeneration
  src = checkpoints.write_deepseek(hf_model, str(tmp_path / "src"), "safetensors", 1)
  convert(src, str(tmp_path / "orbax"), dtype="float32", progress=False)
  export(str(tmp_path / "orbax"), str(tmp_path / "hf"), "hf")
  model, info = JanusForConditionalGeneration.from_pretrained(
      str(tmp_path / "hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  inputs, want = reference_outputs
  ids, mask = torch.from_numpy(inputs["ids"]), torch.from_numpy(inputs["mask"])
  pixels = torch.from_numpy(inputs["pixels"].transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    logits = model.float().eval()(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                                  position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
  np.testing.assert_array_equal(logits, want["logits"])
