"""convert.torch_pickle: torch.save files read without torch and without running pickle code.

torch is used here only to write the files and as the reference for values.
"""
import collections
import json
import os
import pickle
import re
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from convert import torch_pickle
from convert.torch_pickle import CheckpointError, TorchBinFile, read_index


def _save(obj, path):
  torch.save(obj, path)
  return str(path)


def _rewrite(src, dst, edit=lambda name, data: data, compression=zipfile.ZIP_STORED):
  """Copy a zip, passing each member through `edit` (None drops it)."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
    for info in zin.infolist():
      data = edit(info.filename, zin.read(info.filename))
      if data is not None:
        zout.writestr(info.filename, data)
  return str(dst)


def _check(f, tensors):
  assert set(f.keys()) == set(tensors)
  for name, t in tensors.items():
    ours = f(name)
    assert ours.shape == tuple(t.shape) == f.shape(name)
    assert ours.dtype == f.dtype(name)
    np.testing.assert_array_equal(ours.astype(np.float32), t.detach().float().numpy(), err_msg=name)


def test_source_does_not_import_torch():
  src = open(torch_pickle.__file__).read()
  assert not re.search(r"^\s*(import|from)\s+torch\b", src, re.M)


def test_dtypes_views_and_shared_storage(tmp_path):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  sd = collections.OrderedDict(
      f32=base, transposed=base.T, column=base[1:, 2], block=base[2:4, 1:4],
      f16=torch.randn(3, 4, generator=g).half(), bf16=torch.randn(7, 3, generator=g).bfloat16(),
      scalar=torch.tensor(2.5), vector=torch.arange(5, dtype=torch.float32),
      long=torch.arange(4), flags=torch.tensor([True, False]), empty=torch.zeros(0, 3))
  bf = sd["bf16"]
  sd["bf16_T"] = bf.T                         # non-contiguous bf16 view of a shared storage
  with TorchBinFile(_save(sd, tmp_path / "pytorch_model.bin")) as f:
    _check(f, sd)
    assert f.dtype("bf16") == ml_dtypes.bfloat16 and f.dtype("f16") == np.float16
    assert f.dtype("f32") == np.float32 and f.dtype("long") == np.int64
    assert f.dtype("flags") == np.bool_ and f("scalar").shape == ()
    x = f("column")
    assert not x.flags.writeable and not x.flags.owndata       # zero-copy view of the map
    assert np.shares_memory(f("f32"), f("transposed"))


def test_module_state_dict_parameter_and_wrappers(tmp_path):
  model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
  sd = model.state_dict()                      # OrderedDict with _metadata (BUILD)
  with TorchBinFile(_save(sd, tmp_path / "a.bin")) as f:
    _check(f, sd)
  wrapped = {"model": sd, "optimizer": {"step": 3, "lr": [0.1]}, "steps": 10}
  with TorchBinFile(_save(wrapped, tmp_path / "vq.pt")) as f:
    _check(f, sd)
  ema = {k: v * 2 for k, v in sd.items()}
  with TorchBinFile(_save({"model": sd, "ema": ema}, tmp_path / "e.pt"), key="ema") as f:
    _check(f, ema)
  p = {"w": torch.nn.Parameter(torch.randn(2, 3)), "u": torch.tensor([1, 7, 65535], dtype=torch.uint16)}
  with TorchBinFile(_save(p, tmp_path / "p.bin")) as f:   # _rebuild_parameter, _rebuild_tensor_v3
    _check(f, p)
    assert f.dtype("u") == np.uint16


def test_compressed_records_fall_back_to_reading(tmp_path):
  sd = {"a": torch.randn(4, 5), "aT": None}
  sd["aT"] = sd["a"].T
  src = _save(sd, tmp_path / "s.bin")
  with TorchBinFile(_rewrite(src, tmp_path / "d.bin", compression=zipfile.ZIP_DEFLATED)) as f:
    _check(f, sd)


class _Evil:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return os.system, (f"echo pwned > {self.target}",)


def _malicious_zips(tmp_path, target):
  evil = _Evil(target)
  # 1. a real torch.save file with one hostile entry (pickles as GLOBAL 'posix system').
  yield _save({"w": torch.ones(2), "x": evil}, tmp_path / "m1.bin"), "system"
  # 2. a hand-written protocol-0 pickle: GLOBAL os.system, REDUCE.
  pkl = f"cos\nsystem\n(S'echo pwned > {target}'\ntR.".encode()
  with zipfile.ZipFile(tmp_path / "m2.bin", "w") as z:
    z.writestr("archive/data.pkl", pkl)
    z.writestr("archive/byteorder", "little")
  yield str(tmp_path / "m2.bin"), "os.system"
  # 3. builtins.eval through STACK_GLOBAL (protocol 4).
  class Eval:
    def __reduce__(self):
      return eval, (f"__import__('os').system('echo pwned > {target}')",)
  with zipfile.ZipFile(tmp_path / "m3.bin", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"w": Eval()}, protocol=4))
  yield str(tmp_path / "m3.bin"), "builtins.eval"


def test_malicious_pickles_are_refused_without_side_effects(tmp_path):
  target = tmp_path / "pwned.txt"
  for path, glob in _malicious_zips(tmp_path, target):
    with pytest.raises(CheckpointError, match=re.escape(glob)) as e:
      TorchBinFile(path)
    assert path in str(e.value) and "refuses to unpickle" in str(e.value)
    assert not target.exists()


def test_truncated_and_non_zip_files(tmp_path):
  src = _save({"w": torch.randn(256, 256)}, tmp_path / "full.bin")
  data = open(src, "rb").read()
  cut = tmp_path / "cut.bin"
  cut.write_bytes(data[:len(data) // 2])
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"not a checkpoint at all\n" * 10)
  for path in (cut, junk):
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
      TorchBinFile(path)


def test_corrupt_archives(tmp_path):
  src = _save({"w": torch.randn(8, 8), "h": torch.randn(3).half()}, tmp_path / "ok.bin")
  cases = {
      "missing data record": lambda n, d: None if n.endswith("data/0") else d,
      "truncated or corrupt": lambda n, d: d[:10] if n.endswith("data/0") else d,
      "expected one": lambda n, d: None if n.endswith("data.pkl") else d,
      "byte order 'big'": lambda n, d: b"big" if n.endswith("byteorder") else d,
      "unsupported tensor dtype 'torch.QInt8Storage'":
          lambda n, d: d.replace(b"torch\nHalfStorage", b"torch\nQInt8Storage"),
  }
  for i, (message, edit) in enumerate(cases.items()):
    bad = _rewrite(src, tmp_path / f"bad{i}.bin", edit)
    with pytest.raises(CheckpointError, match=re.escape(message)) as e:
      TorchBinFile(bad)
    assert bad in str(e.value)
  for i, obj in enumerate([[torch.ones(2)], {"w": torch.ones(2), "n": 3}, {"model": {"a": 1}}]):
    with pytest.raises(CheckpointError, match="expected a dict of name -> tensor"):
      TorchBinFile(_save(obj, tmp_path / f"top{i}.bin"))


def test_read_index(tmp_path):
  shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
  parts = [{"a": torch.randn(2, 3)}, {"b": torch.randn(4).bfloat16()}]
  for s, part in zip(shards, parts):
    _save(part, tmp_path / s)
  index = tmp_path / "pytorch_model.bin.index.json"
  index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": shards[0], "b": shards[1]}}))
  weight_map = read_index(index)
  assert weight_map == {"a": shards[0], "b": shards[1]}
  for name, shard in weight_map.items():
    with TorchBinFile(tmp_path / shard) as f:
      _check(f, {name: parts[shards.index(shard)][name]})

  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "ok.safetensors").write_bytes(b"")
  inside = "nested/../ok.safetensors"        # ".." that stays inside the directory is fine
  assert read_index(_index(tmp_path / "sub", inside)) == {"x": inside}
  for bad, why in [("../pytorch_model-00001-of-00002.bin", "outside"),
                   ("x/../../outside.bin", "outside"),
                   (str(tmp_path / shards[0]), "invalid shard"),
                   ("missing.bin", "does not exist")]:
    idx = _index(tmp_path / "sub", bad)
    with pytest.raises(CheckpointError, match=why) as e:
      read_index(idx)
    assert str(idx) in str(e.value) and "'x'" in str(e.value)


def _index(directory, shard):
  path = directory / "model.safetensors.index.json"
  path.write_text(json.dumps({"weight_map": {"x": shard}}))
  return path
