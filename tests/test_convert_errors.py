"""Bad input to `python -m convert`: one line `error: ...` naming the file or tensor and
what is wrong, a non-zero exit without traceback, and no DST (nor a temporary sibling)
left behind. One test per bad input of issue 3, item 7."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from convert.__main__ import main
from tests import checkpoints, reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """Tiny pristine checkpoints, written once: transformers layout as safetensors, original
  DeepSeek layout as a torch .bin."""
  model = ref.build_hf_model(ref.GQA, seed=3)
  root = tmp_path_factory.mktemp("sources")
  return dict(hf=checkpoints.write_hf(model, str(root / "hf"), "safetensors", 1),
              deepseek=checkpoints.write_deepseek(model, str(root / "deepseek"), "bin", 1))


@pytest.fixture
def hf_src(sources, tmp_path):
  return shutil.copytree(sources["hf"], str(tmp_path / "src"))


@pytest.fixture
def ds_src(sources, tmp_path):
  return shutil.copytree(sources["deepseek"], str(tmp_path / "src"))


def _fail(capsys, src, dst, *args):
  """Runs the CLI in-process and returns its one error line, having checked the contract."""
  capsys.readouterr()
  code = main([str(src), str(dst), "--quiet", *args])
  out, err = capsys.readouterr()
  assert code != 0, out
  assert "Traceback" not in err, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert not os.path.exists(dst)
  _assert_no_temporaries(dst)
  return lines[0]


def _assert_no_temporaries(dst):
  parent, name = os.path.split(os.path.abspath(dst))
  leftovers = [e for e in os.listdir(parent) if e.startswith(f".{name}.tmp-")]
  assert not leftovers, leftovers


def _edit_safetensors(src, edit):
  from safetensors.numpy import load_file, save_file
  path = os.path.join(src, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})
  return path


def _cut_in_half(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# --- tensors ----------------------------------------------------------------------------------
def test_missing_tensor(capsys, hf_src, tmp_path):
  key = "model.language_model.layers.1.self_attn.o_proj.weight"
  _edit_safetensors(hf_src, lambda t: t.pop(key))
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert f"tensor {key!r} is missing" in line, line


def test_unexpected_tensor(capsys, hf_src, tmp_path):
  key = "model.language_model.layers.7.mlp.down_proj.weight"
  path = _edit_safetensors(hf_src, lambda t: t.update({key: np.zeros((4, 4), np.float32)}))
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert f"unexpected tensor {key!r}" in line and path in line, line


def test_wrong_shape(capsys, hf_src, tmp_path):
  key = "model.language_model.layers.1.mlp.down_proj.weight"
  path = _edit_safetensors(hf_src, lambda t: t.update({key: np.ascontiguousarray(t[key].T)}))
  line = _fail(capsys, hf_src, tmp_path / "dst")
  v = ref.GQA
  assert path in line and f"tensor {key!r} has shape {(v.intermediate, v.hidden)}" in line, line
  assert f"implies {(v.hidden, v.intermediate)}" in line, line


def test_wrong_dtype(capsys, hf_src, tmp_path):
  key = "model.language_model.norm.weight"
  path = _edit_safetensors(hf_src, lambda t: t.update({key: t[key].astype(np.int64)}))
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert path in line and f"tensor {key!r} has dtype int64" in line, line


# --- files ------------------------------------------------------------------------------------
def test_truncated_safetensors(capsys, hf_src, tmp_path):
  path = os.path.join(hf_src, "model.safetensors")
  _cut_in_half(path)
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert path in line and "truncated" in line, line


def test_truncated_bin(capsys, ds_src, tmp_path):
  path = os.path.join(ds_src, "pytorch_model.bin")
  _cut_in_half(path)
  line = _fail(capsys, ds_src, tmp_path / "dst")
  assert path in line and "truncated" in line, line


def test_corrupt_data_found_while_streaming(capsys, ds_src, tmp_path):
  """A .bin whose records are compressed and one is corrupt: only reading the data finds
  it, after the temporary DST has been started."""
  from convert.torch_pickle import TorchBinFile
  path = os.path.join(ds_src, "pytorch_model.bin")
  key = "language_model.model.embed_tokens.weight"
  with TorchBinFile(path) as f:
    member = f._tensors[key].member
  with zipfile.ZipFile(path) as z:
    records = [(info.filename, z.read(info)) for info in z.infolist()]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in records:
      z.writestr(name, data)
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(member)
  with open(path, "r+b") as f:
    f.seek(info.header_offset + 26)
    name_len, extra_len = struct.unpack("<HH", f.read(4))
    f.seek(info.header_offset + 30 + name_len + extra_len + info.compress_size // 2)
    f.write(b"\xff" * 16)
  line = _fail(capsys, ds_src, tmp_path / "dst")
  assert path in line and repr(key) in line and "corrupt" in line, line


@pytest.mark.parametrize("header", ["garbage_json", "absurd_length"])
def test_corrupt_safetensors_header(capsys, hf_src, tmp_path, header):
  path = os.path.join(hf_src, "model.safetensors")
  with open(path, "r+b") as f:
    if header == "garbage_json":
      (n,) = struct.unpack("<Q", f.read(8))
      f.write(b"{\x00 not json" + b"#" * (n - 11))
    else:
      f.write(struct.pack("<Q", 2**62))
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert path in line and "not a readable safetensors file" in line, line


def test_index_pointing_outside_src(capsys, hf_src, tmp_path):
  from safetensors.numpy import load_file, save_file
  tensors = load_file(os.path.join(hf_src, "model.safetensors"))
  save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "x.safetensors"))   # it exists
  weight_map = {k: "model.safetensors" for k in tensors}
  weight_map["model.language_model.norm.weight"] = "../x.safetensors"
  index = os.path.join(hf_src, "model.safetensors.index.json")
  with open(index, "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert index in line and "'../x.safetensors', outside" in line, line


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_pickle_calling_anything_but_tensor_rebuilding(capsys, ds_src, tmp_path):
  import torch
  marker = tmp_path / "pwned"
  path = os.path.join(ds_src, "pytorch_model.bin")
  torch.save({"language_model.model.norm.weight": torch.ones(3), "evil": _Evil(marker)}, path)
  line = _fail(capsys, ds_src, tmp_path / "dst")
  assert path in line and f"refuses to unpickle '{os.system.__module__}.system'" in line, line
  assert not marker.exists()


# --- directories ------------------------------------------------------------------------------
def test_empty_directory(capsys, tmp_path):
  src = tmp_path / "empty"
  src.mkdir()
  line = _fail(capsys, src, tmp_path / "dst")
  assert str(src) in line and "holds no weights" in line, line


def test_src_does_not_exist(capsys, tmp_path):
  src = tmp_path / "nowhere"
  line = _fail(capsys, src, tmp_path / "dst")
  assert str(src) in line and "does not exist" in line, line


def test_checkpoint_of_another_model(capsys, tmp_path):
  from transformers import LlamaConfig, LlamaForCausalLM
  config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)
  src = tmp_path / "llama"
  LlamaForCausalLM(config).save_pretrained(str(src))
  line = _fail(capsys, src, tmp_path / "dst")
  assert str(src) in line and "not look like a Janus checkpoint" in line, line


def test_config_is_not_json(capsys, hf_src, tmp_path):
  path = os.path.join(hf_src, "config.json")
  with open(path, "w") as f:
    f.write('{"text_config": {')
  line = _fail(capsys, hf_src, tmp_path / "dst")
  assert path in line and "not valid JSON" in line, line


def test_existing_dst_is_refused_then_replaced_with_overwrite(capsys, hf_src, tmp_path):
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "old.txt").write_text("keep me")
  capsys.readouterr()
  assert main([hf_src, str(dst), "--quiet"]) != 0
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert str(dst) in lines[0] and "already exists" in lines[0] and "--overwrite" in lines[0]
  assert sorted(os.listdir(dst)) == ["old.txt"] and (dst / "old.txt").read_text() == "keep me"
  _assert_no_temporaries(dst)

  assert main([hf_src, str(dst), "--quiet", "--overwrite", "--dtype", "float32"]) == 0, \
      capsys.readouterr().err
  assert not (dst / "old.txt").exists()
  assert (dst / "config.json").is_file() and (dst / "params").is_dir()
  assert sorted(e for e in os.listdir(tmp_path) if e.startswith(".")) == []


# --- a real process ---------------------------------------------------------------------------
def test_real_process_prints_one_line_and_exits_1(hf_src, tmp_path):
  _cut_in_half(os.path.join(hf_src, "model.safetensors"))
  dst = tmp_path / "dst"
  out = subprocess.run([sys.executable, "-m", "convert", hf_src, str(dst)],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 1, out
  assert "Traceback" not in out.stderr, out.stderr
  lines = out.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert "model.safetensors" in lines[0]
  assert not dst.exists()
  _assert_no_temporaries(dst)
