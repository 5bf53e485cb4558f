"""The trainer on real prepared datasets (janus_jax.data.pipeline), starting from a
converted checkpoint: the path a Stage III fine-tune takes, with the tokenizer read from
the init checkpoint, and resume restoring the grain iterator's state."""
import os
import sys

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from janus_jax import checkpoint
from janus_jax.train import loop
from tests import test_data_support as S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_pipeline")
  model_config = S.tiny_config()
  init = S.tiny_checkpoint(str(root / "init"), model_config)
  rng = np.random.default_rng(0)
  n = model_config.vq.num_tokens
  t2i = [{"caption": f"{S.CAPTIONS[i % 5]} {i}", "id": str(i),
          "codes": rng.integers(0, model_config.vq.codebook_size, n).astype(np.int32)}
         for i in range(12)]
  und = [{"conversation": ('[{"role": "user", "content": "' + S.QUESTIONS[i % 3] + '"}, '
                           '{"role": "assistant", "content": "' + S.ANSWERS[i % 3] + '"}]'),
          "images": [S.png_bytes(rng, 40, 30)], "id": str(i)} for i in range(12)]
  text = [{"text": f"document {i}: {S.CAPTIONS[i % 5]}", "id": str(i)} for i in range(12)]
  sources = [{"kind": "t2i", "path": S.write_prepared(str(root / "t2i"), "t2i", t2i, n)},
             {"kind": "understanding",
              "path": S.write_prepared(str(root / "und"), "understanding", und)},
             {"kind": "text", "path": S.write_prepared(str(root / "text"), "text", text)}]
  return root, init, sources


def stage3_config(init, sources, steps):
  import stage3
  c = stage3.get_config("tiny")
  c.init.source, c.init.path = "checkpoint", init
  c.data = S.data_config(sources, kind_weights={"understanding": 5, "text": 1, "t2i": 4},
                         seq_len=512, max_images_per_row=2)
  c.num_steps = steps
  c.checkpoint.every = 2
  c.log_every = 1
  c.export = True
  c.tensorboard = False
  # Single-threaded Eigen: bit-identical runs (see tests/test_train_loop.py).
  c.xla_compiler_options = {"xla_backend_optimization_level": 0,
                            "xla_cpu_multi_thread_eigen": False}
  return c


def test_stage3_on_prepared_data_resumes_with_the_same_batches(prepared):
  root, init, sources = prepared
  device = jax.devices()[:1]
  straight = loop.train(stage3_config(init, sources, 4), str(root / "straight"), devices=device,
                        log=lambda _: None)
  for kind in ("understanding", "text", "t2i"):
    assert np.isfinite(straight["metrics"][f"loss/{kind}"]), kind

  resumed_dir = str(root / "resumed")
  first = loop.train(stage3_config(init, sources, 2), resumed_dir, devices=device,
                     log=lambda _: None)
  assert first["step"] == 2 and first["export"] is not None
  lines = []
  resumed = loop.train(stage3_config(init, sources, 4), resumed_dir, devices=device,
                       log=lines.append)
  assert resumed["start_step"] == 2 and any("resumed from step 2" in l for l in lines)
  got = flatten_dict(jax.device_get(checkpoint.restore_params(resumed["export"])))
  want = flatten_dict(jax.device_get(checkpoint.restore_params(straight["export"])))
  for key in want:
    assert np.array_equal(got[key], want[key]), "/".join(key)
  # The VQ came from the init checkpoint and never trained.
  init_params = flatten_dict(jax.device_get(checkpoint.restore_params(init)))
  for key in want:
    if key[0] == "vq":
      assert np.array_equal(want[key], init_params[key])
  assert os.path.isfile(os.path.join(straight["export"], "tokenizer.json"))
