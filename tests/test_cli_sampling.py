"""The sampling CLIs end to end on a tiny converted checkpoint (float32, CPU).

`python -m janus_jax.generate` (flat and GenEval layouts) and `python -m janus_jax.chat`
(one question and interactive), mostly through `main(argv)` in-process, once each as a
real subprocess; every user error ends in one `error:` line, a non-zero exit and no
traceback.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import janus_jax
from convert.pipeline import convert
from janus_jax import chat, generate, sampling
from tests import checkpoints, reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = "zebra " * 600   # thousands of tokens: more than the tiny context of 512
# The same shapes everywhere, so the sampling programs compile once for the module.
GEN = ["--dtype", "float32", "--batch-size", "2", "--cfg-weight", "3"]
CHAT = ["--dtype", "float32", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  src = checkpoints.write_hf(ref.build_hf_model(ref.GQA, seed=11), str(root / "src"))
  dst = str(root / "dst")
  convert(src, dst, dtype="float32", progress=False)
  return dst


@pytest.fixture(scope="module")
def loaded(ckpt):
  return janus_jax.load(ckpt, dtype="float32")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  paths = [str(root / "a.png"), str(root / "b.jpg")]
  Image.fromarray(rng.integers(0, 256, (40, 28, 3), dtype=np.uint8)).save(paths[0])
  Image.fromarray(rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)).save(paths[1])
  return paths


def _generate(ckpt, out, *extra):
  return generate.main(["--checkpoint", ckpt, "--out", str(out), *GEN, *extra])


@pytest.fixture(scope="module")
def flat_run(ckpt, tmp_path_factory):
  out = tmp_path_factory.mktemp("flat")
  assert _generate(ckpt, out, "--prompt", "a red circle", "--num-images", "3", "--seed", "5") == 0
  return out


def _png(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _error_line(capsys) -> str:
  """The one `error:` line of stderr (the last line), checking there is no traceback."""
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert [line for line in lines if "error:" in line] == lines[-1:], err
  return lines[-1]


# --- generate -----------------------------------------------------------------------------------
def test_generate_writes_one_png_per_image_a_grid_and_settings(flat_run, loaded, capsys):
  names = sorted(os.listdir(flat_run))
  assert names == ["0000_000.png", "0000_001.png", "0000_002.png", "grid.png", "settings.json"]
  side = loaded.config.vq.image_size
  pixels = [_png(flat_run / f"0000_00{n}.png") for n in range(3)]
  h, w = pixels[0].shape[:2]
  assert (h, w) == (side, side) and all(p.shape == (h, w, 3) for p in pixels)
  assert not np.array_equal(pixels[0], pixels[1])     # different images of one prompt
  # 3 images -> 2 columns x 2 rows, 2 px apart, in order.
  grid = _png(flat_run / "grid.png")
  pad = generate.GRID_PAD
  assert grid.shape == (2 * (h + pad) + pad, 2 * (w + pad) + pad, 3)
  np.testing.assert_array_equal(grid[pad:pad + h, pad:pad + w], pixels[0])
  np.testing.assert_array_equal(grid[pad:pad + h, 2 * pad + w:2 * pad + 2 * w], pixels[1])
  np.testing.assert_array_equal(grid[2 * pad + h:2 * pad + 2 * h, pad:pad + w], pixels[2])
  settings = json.loads((flat_run / "settings.json").read_text())
  assert settings["prompts"] == ["a red circle"] and settings["num_images"] == 3
  assert settings["seed"] == 5 and settings["cfg_weight"] == 3.0 and settings["images"] == 3
  assert settings["checkpoint"] == os.path.abspath(loaded.directory)
  t = settings["timings"]
  assert t["compile_s"] >= 0 and t["generate_s"] > 0 and t["load_s"] > 0
  assert t["images_per_s"] == pytest.approx(3 / t["generate_s"], rel=1e-2)


def test_generated_pngs_are_the_images_sampling_makes(flat_run, loaded):
  codes = sampling.generate_image_codes(loaded, ["a red circle"], num_images=3, cfg_weight=3.0,
                                        seed=5, batch_size=2)
  want = sampling.decode_images(loaded, codes)
  for n in range(3):
    np.testing.assert_array_equal(_png(flat_run / f"0000_00{n}.png"), want[n])


def test_same_seed_gives_identical_png_bytes_and_another_seed_does_not(ckpt, flat_run, tmp_path):
  args = ["--prompt", "a red circle", "--num-images", "3"]
  assert _generate(ckpt, tmp_path / "same", *args, "--seed", "5") == 0
  assert _generate(ckpt, tmp_path / "other", *args, "--seed", "6") == 0
  for n in range(3):
    name = f"0000_00{n}.png"
    assert (tmp_path / "same" / name).read_bytes() == (flat_run / name).read_bytes()
  assert (tmp_path / "other" / "0000_000.png").read_bytes() != (flat_run / "0000_000.png").read_bytes()


def test_text_prompts_file_skips_blank_lines_and_names_files_by_prompt(ckpt, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle\n\n  \na cat\n")
  assert _generate(ckpt, tmp_path / "out", "--prompts-file", str(prompts), "--num-images", "2") == 0
  assert sorted(os.listdir(tmp_path / "out")) == [
      "0000_000.png", "0000_001.png", "0001_000.png", "0001_001.png", "grid.png",
      "settings.json"]
  assert json.loads((tmp_path / "out" / "settings.json").read_text())["prompts"] == [
      "a red circle", "a cat"]
  summary = capsys.readouterr().out.strip().splitlines()
  assert len(summary) == 1 and str(tmp_path / "out") in summary[0] and "compile" in summary[0]


GENEVAL_LINES = [
    '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], '
    '"prompt": "a photo of a bench"}',
    '{"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], '
    '"prompt": "a red cat"}',
]


def test_geneval_metadata_gives_the_geneval_folder_layout(ckpt, tmp_path):
  metadata = tmp_path / "evaluation_metadata.jsonl"
  metadata.write_text("\n".join(GENEVAL_LINES) + "\n")
  out = tmp_path / "out"
  assert _generate(ckpt, out, "--prompts-file", str(metadata), "--num-images", "2") == 0
  assert sorted(os.listdir(out)) == ["00000", "00001", "settings.json"]
  for index, line in enumerate(GENEVAL_LINES):
    folder = out / f"{index:05d}"
    assert sorted(os.listdir(folder)) == ["grid.png", "metadata.jsonl", "samples"]
    assert (folder / "metadata.jsonl").read_text().strip() == line
    with open(folder / "metadata.jsonl") as f:   # as GenEval's evaluate_images.py reads it
      assert json.load(f) == json.loads(line)
    assert sorted(os.listdir(folder / "samples")) == ["00000.png", "00001.png"]
    assert _png(folder / "grid.png").shape[1] > _png(folder / "samples" / "00000.png").shape[1]
  settings = json.loads((out / "settings.json").read_text())
  assert settings["layout"] == "geneval" and settings["prompts"] == ["a photo of a bench", "a red cat"]


def test_prompts_file_format_is_detected_by_extension_or_first_line(tmp_path):
  as_txt = tmp_path / "meta.txt"
  as_txt.write_text("\n" + GENEVAL_LINES[0] + "\n\n" + GENEVAL_LINES[1] + "\n")
  assert generate.read_prompts_file(str(as_txt)) == (["a photo of a bench", "a red cat"],
                                                     GENEVAL_LINES)
  plain = tmp_path / "plain.txt"
  plain.write_text("a {curly} cat\n[1, 2]\n")
  assert generate.read_prompts_file(str(plain)) == (["a {curly} cat", "[1, 2]"], None)
  bad = tmp_path / "bad.jsonl"
  bad.write_text(GENEVAL_LINES[0] + "\n{\"tag\": \"x\"}\n")
  with pytest.raises(ValueError, match="line 2"):
    generate.read_prompts_file(str(bad))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py)")
def test_generate_on_a_mesh_writes_the_same_images(ckpt, flat_run, tmp_path):
  args = ["--prompt", "a red circle", "--num-images", "3", "--seed", "5", "--mesh", "2,2,2"]
  assert _generate(ckpt, tmp_path, *args) == 0
  for n in range(3):
    np.testing.assert_array_equal(_png(tmp_path / f"0000_00{n}.png"),
                                  _png(flat_run / f"0000_00{n}.png"))


# --- chat ---------------------------------------------------------------------------------------
def _chat(ckpt, *extra):
  return chat.main(["--checkpoint", ckpt, *CHAT, *extra])


def test_chat_prints_the_answer_generate_text_gives(ckpt, loaded, images, capsys):
  question = "What colour is the circle?"
  assert _chat(ckpt, "--image", images[0], "--question", question) == 0
  out = capsys.readouterr().out
  want = sampling.generate_text(loaded, [question], [images[0]], max_new_tokens=8)[0]
  assert want.strip() and out == want + "\n"


def test_chat_with_two_images_answers_about_both(ckpt, loaded, images, capsys):
  question = "How many shapes are there?"
  assert _chat(ckpt, "--image", images[0], "--image", images[1], "--question", question) == 0
  want = sampling.generate_text(loaded, [question], [images], max_new_tokens=8)[0]
  assert capsys.readouterr().out == want + "\n"


def test_interactive_chat_keeps_the_history_and_ends_at_eof(ckpt, loaded, images, capsys,
                                                            monkeypatch):
  import io
  first, second = "What colour is the circle?", "Is there a triangle?"
  monkeypatch.setattr(sys, "stdin", io.StringIO(f"{first}\n{second}\n"))
  assert _chat(ckpt, "--image", images[0]) == 0
  captured = capsys.readouterr()
  one = sampling.generate_text(loaded, [first], [images[0]], max_new_tokens=8)[0]
  assert one.strip()   # else the first turn would (rightly) be left out of the history
  turns = [{"role": "user", "content": "<image_placeholder>\n" + first},
           {"role": "assistant", "content": one}, {"role": "user", "content": second}]
  two = sampling.generate_text(loaded, [turns], [[images[0]]], max_new_tokens=8)[0]
  assert captured.out == f"{one}\n{two}\n"
  assert captured.err.count("> ") == 3 and "Traceback" not in captured.err


# --- the real entry points ----------------------------------------------------------------------
def _subprocess(module, *args, stdin=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)   # one device, as a user runs it
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, input=stdin,
                        capture_output=True, text=True, timeout=300)


def test_generate_entry_point_writes_the_same_pngs_as_main(ckpt, flat_run, tmp_path):
  result = _subprocess("janus_jax.generate", "--checkpoint", ckpt, "--out", str(tmp_path), *GEN,
                       "--prompt", "a red circle", "--num-images", "3", "--seed", "5")
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("\n") == 1 and result.stdout.startswith("wrote 3 images")
  for n in range(3):
    name = f"0000_00{n}.png"
    assert (tmp_path / name).read_bytes() == (flat_run / name).read_bytes()


def test_chat_entry_point_prints_only_the_answer(ckpt, loaded, images):
  question = "What colour is the circle?"
  result = _subprocess("janus_jax.chat", "--checkpoint", ckpt, *CHAT, "--image", images[0],
                       "--question", question)
  assert result.returncode == 0, result.stderr
  want = sampling.generate_text(loaded, [question], [images[0]], max_new_tokens=8)[0]
  assert result.stdout == want + "\n"
  assert "compile" in result.stderr


# --- bad input ----------------------------------------------------------------------------------
def test_generate_prompt_too_long_for_the_context(ckpt, tmp_path, capsys):
  assert _generate(ckpt, tmp_path, "--prompt", LONG) == 1
  assert "context" in _error_line(capsys)


def test_chat_question_too_long_for_the_context(ckpt, images, capsys):
  assert _chat(ckpt, "--image", images[0], "--question", LONG) == 1
  assert "context" in _error_line(capsys)


def test_generate_empty_prompt(ckpt, tmp_path, capsys):
  assert _generate(ckpt, tmp_path, "--prompt", "  ") == 1
  assert "empty" in _error_line(capsys)


def test_chat_empty_question(ckpt, images, capsys):
  assert _chat(ckpt, "--image", images[0], "--question", "") == 1
  assert "empty" in _error_line(capsys)


def test_chat_missing_image_file(ckpt, tmp_path, capsys):
  assert _chat(ckpt, "--image", str(tmp_path / "nope.png"), "--question", "hi") == 1
  assert "nope.png" in _error_line(capsys)


def test_chat_corrupt_image_file(ckpt, tmp_path, capsys):
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(b"this is not an image")
  assert _chat(ckpt, "--image", str(corrupt), "--question", "hi") == 1
  assert "corrupt.png" in _error_line(capsys)


def test_generate_zero_images(ckpt, tmp_path, capsys):
  assert _generate(ckpt, tmp_path, "--prompt", "a cat", "--num-images", "0") == 2
  assert "--num-images" in _error_line(capsys)


@pytest.mark.parametrize("cli", ["generate", "chat"])
def test_checkpoint_without_tokenizer(ckpt, images, tmp_path, capsys, cli):
  bare = tmp_path / "bare"
  shutil.copytree(ckpt, bare)
  os.remove(bare / "tokenizer.json")
  if cli == "generate":
    code = generate.main(["--checkpoint", str(bare), "--out", str(tmp_path / "o"), *GEN,
                          "--prompt", "a cat"])
  else:
    code = chat.main(["--checkpoint", str(bare), *CHAT, "--image", images[0], "--question", "hi"])
  assert code == 1
  assert "tokenizer.json" in _error_line(capsys)


@pytest.mark.parametrize("cli", ["generate", "chat"])
def test_checkpoint_directory_that_does_not_exist(tmp_path, images, capsys, cli):
  missing = str(tmp_path / "no_such_checkpoint")
  if cli == "generate":
    code = generate.main(["--checkpoint", missing, "--out", str(tmp_path / "o"), "--prompt", "x"])
  else:
    code = chat.main(["--checkpoint", missing, "--image", images[0], "--question", "hi"])
  assert code == 1
  assert "no_such_checkpoint" in _error_line(capsys)


@pytest.mark.parametrize("main, source", [(generate.main, "--prompt"), (chat.main, "--question")])
def test_unknown_flag(ckpt, capsys, main, source):
  assert main(["--checkpoint", ckpt, source, "x", "--bogus"]) == 2
  assert "--bogus" in _error_line(capsys)


@pytest.mark.parametrize("choice", ["both", "neither"])
def test_generate_needs_exactly_one_of_prompt_and_prompts_file(ckpt, tmp_path, capsys, choice):
  prompts = tmp_path / "p.txt"
  prompts.write_text("a cat\n")
  source = (["--prompt", "a cat", "--prompts-file", str(prompts)] if choice == "both" else [])
  assert _generate(ckpt, tmp_path, *source) == 2
  assert "--prompts-file" in _error_line(capsys)


def test_prompts_file_that_does_not_exist(ckpt, tmp_path, capsys):
  assert _generate(ckpt, tmp_path, "--prompts-file", str(tmp_path / "missing.jsonl")) == 1
  assert "missing.jsonl" in _error_line(capsys)
