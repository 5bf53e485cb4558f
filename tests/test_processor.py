"""Processor: prompt templates, token ids and pixel values against transformers' Janus
processor and the reference strings of JANUS.md §3.3–3.4; left-padded batches."""
import json
import shutil
import os

import numpy as np
import pytest
from PIL import Image

from janus_jax.config import JanusConfig
from janus_jax.processor import (DEFAULT_SYSTEM_PROMPT, Processor, preprocess_generation_image,
                                 preprocess_image, resized_size)
from tests.reference import TOKENS
from tests.tiny_tokenizer import write_tokenizer

S = 32            # the tiny config's vision.image_size
N_IMAGE = 16      # its num_image_tokens
BOS, EOS, PAD = TOKENS["bos_token_id"], TOKENS["eos_token_id"], TOKENS["pad_token_id"]
IMG, BOI, EOI = TOKENS["image_token_id"], TOKENS["boi_token_id"], TOKENS["eoi_token_id"]

# transformers' chat template for Janus, verbatim from
# transformers/models/janus/convert_janus_weights_to_hf.py (not shipped in the wheel).
HF_CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)


def _config():
  return JanusConfig.preset("tiny").replace(**TOKENS)


def _rng_image(h, w, mode="RGB", seed=0):
  rng = np.random.default_rng(seed)
  channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
  shape = (h, w) if channels is None else (h, w, channels)
  return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tokenizer"))
  write_tokenizer(directory)
  return directory


@pytest.fixture(scope="module")
def bos_tokenizer_dir(tmp_path_factory, tokenizer_dir):
  """The same tokenizer with a post-processor that adds BOS, like DeepSeek's tokenizer.json."""
  from tokenizers import Tokenizer, processors
  tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
  bos = "<｜begin▁of▁sentence｜>"
  tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                     special_tokens=[(bos, BOS)])
  directory = str(tmp_path_factory.mktemp("bos_tokenizer"))
  tok.save(os.path.join(directory, "tokenizer.json"))
  return directory


@pytest.fixture(scope="module")
def processor(tokenizer_dir):
  return Processor.from_directory(tokenizer_dir, _config())


@pytest.fixture(scope="module")
def hf_processor(bos_tokenizer_dir):
  from transformers import JanusProcessor, PreTrainedTokenizerFast
  tok = PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(bos_tokenizer_dir, "tokenizer.json"),
      bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>",
      pad_token="<｜▁pad▁｜>", extra_special_tokens={
          "image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
          "eoi_token": "<end_of_image>"})
  return JanusProcessor(_hf_image_processor(), tok, chat_template=HF_CHAT_TEMPLATE,
                        use_default_system_prompt=True, num_image_tokens=N_IMAGE)


def _hf_image_processor():
  from transformers import JanusImageProcessorPil
  return JanusImageProcessorPil(size={"height": S, "width": S}, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3, do_convert_rgb=True)


# --- special tokens and role styles ---------------------------------------------------------
def test_special_token_ids_are_looked_up_in_the_vocabulary(processor):
  for field, value in TOKENS.items():
    assert getattr(processor, field) == value
  assert processor.num_image_tokens == N_IMAGE and processor.image_size == S


def test_config_token_id_that_disagrees_with_the_tokenizer_is_rejected(tokenizer_dir):
  bad = _config().replace(pad_token_id=9)
  with pytest.raises(ValueError, match="pad_token_id mismatch.*id 3.*says 9"):
    Processor.from_directory(tokenizer_dir, bad)


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no tokenizer.json"):
    Processor.from_directory(str(tmp_path), _config())


def test_role_style_is_detected_from_the_vocabulary(tmp_path, tokenizer_dir, processor):
  assert processor.role_style == "pro"
  with open(os.path.join(tokenizer_dir, "tokenizer.json")) as f:
    data = json.load(f)
  # A Janus-1.3B-like vocabulary: no "<|User|>" token.
  data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|User|>"]
  data["model"]["vocab"].pop("<|User|>")
  with open(tmp_path / "tokenizer.json", "w") as f:
    json.dump(data, f)
  assert Processor.from_directory(str(tmp_path), _config()).role_style == "janus"
  with open(tmp_path / "processor_config.json", "w") as f:
    json.dump({"role_style": "pro"}, f)
  assert Processor.from_directory(str(tmp_path), _config()).role_style == "pro"
  with pytest.raises(ValueError, match="role_style"):
    Processor.from_directory(tokenizer_dir, _config(), role_style="llama")


def test_system_prompt_comes_from_processor_config(tmp_path, tokenizer_dir, processor):
  """A model trained without the default system prompt names its own in
  processor_config.json; understanding prompts and batches then use it."""
  question = [{"role": "user", "content": "What is it?"}]
  assert processor.understanding_prompt(question).startswith(DEFAULT_SYSTEM_PROMPT)
  shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), tmp_path / "tokenizer.json")
  with open(tmp_path / "processor_config.json", "w") as f:
    json.dump({"system_prompt": ""}, f)
  other = Processor.from_directory(str(tmp_path), _config())
  assert other.understanding_prompt(question) == "<|User|>: What is it?\n\n<|Assistant|>:"
  short = other.understanding_batch(["What is it?"], [None])["input_ids"]
  long = processor.understanding_batch(["What is it?"], [None])["input_ids"]
  assert short.shape[1] < long.shape[1]
  assert list(short[0]) == other.encode(other.understanding_prompt(question))
  # an explicit argument still wins
  assert other.understanding_prompt(question, "Be brief.").startswith("Be brief.\n\n")


def test_image_position_comes_from_processor_config(tmp_path, tokenizer_dir, processor):
  assert processor.place_images("What is it?", 1) == "<image_placeholder>\nWhat is it?"
  shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), tmp_path / "tokenizer.json")
  with open(tmp_path / "processor_config.json", "w") as f:
    json.dump({"image_position": "after"}, f)
  after = Processor.from_directory(str(tmp_path), _config())
  assert after.place_images("What is it?", 2) == (
      "What is it?\n<image_placeholder>\n<image_placeholder>")
  assert after.place_images("<image_placeholder> What?", 1) == "<image_placeholder> What?"
  image = np.zeros((8, 8, 3), np.uint8)
  batch = after.understanding_batch(["What is it?"], [image])
  ids = list(batch["input_ids"][0])
  question = after.tokenizer.encode("What", add_special_tokens=False).ids[0]
  assert ids.index(question) < ids.index(after.boi_token_id)
  from janus_jax.chat import conversation
  turns = conversation([("What is it?", "a cat")], "And now?", 1, after)
  assert turns[0]["content"] == "What is it?\n<image_placeholder>"
  with open(tmp_path / "processor_config.json", "w") as f:
    json.dump({"image_position": "middle"}, f)
  with pytest.raises(ValueError, match="image_position"):
    Processor.from_directory(str(tmp_path), _config())


# --- templates ------------------------------------------------------------------------------
SYSTEM = DEFAULT_SYSTEM_PROMPT


@pytest.mark.parametrize("style, user, assistant", [("pro", "<|User|>", "<|Assistant|>"),
                                                    ("janus", "User", "Assistant")])
def test_prompt_strings_equal_the_reference_templates(tokenizer_dir, style, user, assistant):
  # Expected strings as printed by the original conversation.py (JANUS.md §3.3, §3.4).
  p = Processor.from_directory(tokenizer_dir, _config(), role_style=style)
  single = p.understanding_prompt([{"role": "user",
                                     "content": "<image_placeholder>\nWhat is it?"}])
  assert single == f"{SYSTEM}\n\n{user}: <image_placeholder>\nWhat is it?\n\n{assistant}:"
  multi = p.understanding_prompt([
      {"role": "user", "content": "<image_placeholder>\nQ1"},
      {"role": "assistant", "content": "A1"},
      {"role": "user", "content": "  Q2 "}, {"role": "assistant", "content": ""}])
  assert multi == (f"{SYSTEM}\n\n{user}: <image_placeholder>\nQ1\n\n{assistant}: "
                   f"A1<｜end▁of▁sentence｜>{user}: Q2\n\n{assistant}:")
  assert p.understanding_prompt([{"role": "user", "content": "Hi"}], system_prompt="") == \
      f"{user}: Hi\n\n{assistant}:"
  assert p.generation_prompt("a red circle") == \
      f"{user}: a red circle\n\n{assistant}:<begin_of_image>"


def _hf_messages(turns, image_turns=()):
  messages = []
  for i, (role, text) in enumerate(turns):
    content = [{"type": "image"}] * (i in image_turns) + [{"type": "text", "text": text}]
    messages.append({"role": role, "content": content})
  return messages


CONVERSATIONS = {
    "single": [("user", "What colour is the circle?")],
    "multi": [("user", "What colour is the circle?"), ("assistant", "red"),
              ("user", "How many shapes are there?"), ("assistant", "two"),
              ("user", "Is there a triangle?")],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_understanding_prompt_and_ids_equal_transformers(processor, hf_processor, name):
  turns = CONVERSATIONS[name]
  hf_text = hf_processor.apply_chat_template(_hf_messages(turns, image_turns=(0,)),
                                             add_generation_prompt=True, tokenize=False)
  ours = processor.understanding_prompt(
      [{"role": r, "content": ("<image_placeholder>\n" if i == 0 else "") + t}
       for i, (r, t) in enumerate(turns)])
  from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT as HF_SYSTEM
  assert ours == HF_SYSTEM + hf_text   # transformers prepends the system prompt in __call__
  image = _rng_image(20, 32)
  hf = hf_processor(text=hf_text, images=[image], return_tensors="np")
  batch = processor.understanding_batch(
      [[{"role": r, "content": ("<image_placeholder>\n" if i == 0 else "") + t}
        for i, (r, t) in enumerate(turns)]], [image])
  np.testing.assert_array_equal(batch["input_ids"], hf["input_ids"])
  np.testing.assert_allclose(batch["pixel_values"][0, 0],
                             hf["pixel_values"][0].transpose(1, 2, 0), atol=1e-6)


def test_generation_ids_equal_transformers_image_mode(processor, hf_processor):
  hf_text = hf_processor.apply_chat_template(_hf_messages([("user", "a red circle")]),
                                             add_generation_prompt=True, tokenize=False)
  hf = hf_processor(text=hf_text, generation_mode="image", return_tensors="np")
  ours = processor.generation_batch(["a red circle"])
  np.testing.assert_array_equal(ours["input_ids"], hf["input_ids"])
  assert ours["input_ids"][0, 0] == BOS and ours["input_ids"][0, -1] == BOI


def test_bos_is_added_exactly_once_whatever_the_post_processor(processor, bos_tokenizer_dir):
  other = Processor.from_directory(bos_tokenizer_dir, _config())
  text = processor.generation_prompt("a photo of a cat")
  assert processor.encode(text) == other.encode(text)
  assert processor.encode(text).count(BOS) == 1 and processor.encode(text)[0] == BOS


def test_decode_drops_special_tokens(processor):
  ids = processor.encode("a photo of a cat")
  assert processor.decode(ids) == "a photo of a cat"
  assert processor.decode(np.array(ids + [EOS, PAD, PAD])) == "a photo of a cat"
  assert processor.decode(ids, skip_special_tokens=False).startswith("<｜begin▁of▁sentence｜>")


# --- pixels ---------------------------------------------------------------------------------
def _palette(transparent: bool):
  image = _rng_image(33, 21).quantize(16)
  if transparent:
    image.info["transparency"] = 3
  return image


def _rgba():
  image = np.asarray(_rng_image(40, 64, "RGBA")).copy()
  image[:12, :, 3] = 0            # fully transparent band: composited onto white
  image[12:20, :, 3] = 100
  return Image.fromarray(image, mode="RGBA")


IMAGES = {
    "square": lambda: _rng_image(48, 48), "wide": lambda: _rng_image(40, 64),
    "tall": lambda: _rng_image(50, 30), "grayscale": lambda: _rng_image(36, 48, "L"),
    "rgba": _rgba, "palette": lambda: _palette(False),
    "palette_transparent": lambda: _palette(True),
    "gray_alpha": lambda: _rng_image(20, 30, "L").convert("LA"),
    "one_pixel": lambda: _rng_image(1, 1),
    "downscale": lambda: _rng_image(500, 380), "extreme": lambda: _rng_image(3, 64),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pixel_values_equal_transformers_image_processor(name):
  image = IMAGES[name]()
  h, w = image.height, image.width
  # transformers rounds the short side, the original truncates; these sizes agree.
  long = max(h, w)
  assert resized_size(h, w, S) == (max(round(h * S / long), 14), max(round(w * S / long), 14))
  ours = preprocess_image(image, S)
  reference = _hf_image_processor()(image, return_tensors="np")["pixel_values"][0]
  assert ours.shape == (S, S, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, reference.transpose(1, 2, 0), atol=1 / 255)


def test_sixteen_bit_images_are_scaled_not_clipped():
  eight = np.asarray(_rng_image(24, 40, "L"))
  sixteen = eight.astype(np.uint16) * 257       # the same picture at 16 bits
  reference = preprocess_image(Image.fromarray(eight, mode="L"), S)
  np.testing.assert_allclose(preprocess_image(Image.fromarray(sixteen), S), reference, atol=1e-6)
  np.testing.assert_allclose(preprocess_image(sixteen, S), reference, atol=1e-6)
  rgb16 = np.stack([sixteen] * 3, -1)
  np.testing.assert_allclose(preprocess_image(rgb16, S), reference, atol=1e-6)
  assert Image.fromarray(sixteen).mode == "I;16"
  # PIL's convert("RGB") (used by transformers and the original) clips at 255 instead.
  clipped = np.asarray(Image.fromarray(sixteen).convert("RGB"))
  assert (clipped[eight > 0] == 255).all()


def test_resize_truncates_the_short_side_like_the_original():
  assert resized_size(77, 100, S) == (24, 32)       # transformers would give 25
  assert resized_size(1, 1000, 384) == (14, 384)    # min_size
  assert resized_size(100, 100, 384) == (384, 384)
  white = Image.new("RGB", (100, 77), (255, 255, 255))
  pixels = preprocess_image(white, S)
  rows = pixels[:, S // 2, 0]
  gray = (127 / 255 - 0.5) / 0.5
  np.testing.assert_allclose(rows[:4], gray, atol=1e-6)      # (32 - 24) // 2 rows above
  np.testing.assert_allclose(rows[4:28], 1.0, atol=1e-6)
  np.testing.assert_allclose(rows[28:], gray, atol=1e-6)


def test_arrays_and_files_give_the_same_pixels_as_pil(tmp_path):
  image = _rng_image(30, 40)
  np.testing.assert_array_equal(preprocess_image(np.asarray(image), S), preprocess_image(image, S))
  gray = _rng_image(30, 40, "L")
  np.testing.assert_array_equal(preprocess_image(np.asarray(gray), S), preprocess_image(gray, S))
  image.save(tmp_path / "x.png")
  np.testing.assert_array_equal(preprocess_image(str(tmp_path / "x.png"), S),
                                preprocess_image(image, S))


def test_bad_images_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    preprocess_image(str(tmp_path / "missing.png"), S)
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match="cannot read image file"):
    preprocess_image(str(tmp_path / "corrupt.png"), S)
  with pytest.raises(ValueError, match="uint8 or uint16"):
    preprocess_image(np.zeros((8, 8, 3), np.float32), S)
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    preprocess_image(np.zeros((8, 8, 2), np.uint8), S)


def test_generation_image_is_resized_on_the_short_side_and_centre_cropped():
  stripes = np.zeros((32, 96, 3), np.uint8)
  stripes[:, :32] = (255, 0, 0)
  stripes[:, 32:64] = (0, 255, 0)
  stripes[:, 64:] = (0, 0, 255)
  out = preprocess_generation_image(stripes, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[:, 2:-2], np.broadcast_to([-1.0, 1.0, -1.0], (16, 12, 3)),
                             atol=1e-6)   # only the middle (green) third survives
  tall = preprocess_generation_image(np.ascontiguousarray(stripes.transpose(1, 0, 2)), 16)
  np.testing.assert_allclose(tall[2:-2], np.broadcast_to([-1.0, 1.0, -1.0], (12, 16, 3)), atol=1e-6)


# --- batches --------------------------------------------------------------------------------
def test_understanding_batch_left_pads_masks_positions_and_expands_images(processor):
  a, b = _rng_image(20, 32, seed=1), _rng_image(32, 20, seed=2)
  batch = processor.understanding_batch(
      ["What colour is the circle?", "Is there a triangle? no no no"], [a, [b]])
  ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["positions"]
  assert ids.dtype == mask.dtype == pos.dtype == np.int32
  lengths = mask.sum(1)
  assert lengths[0] != lengths[1] and ids.shape[1] == lengths.max()
  for row in range(2):
    pad = ids.shape[1] - lengths[row]
    assert (ids[row, :pad] == PAD).all() and (mask[row, :pad] == 0).all()
    assert (mask[row, pad:] == 1).all() and ids[row, pad] == BOS
    np.testing.assert_array_equal(pos[row, pad:], np.arange(lengths[row]))
    assert (pos[row, :pad] == 0).all()
    tokens = list(ids[row, pad:])
    start = tokens.index(BOI)
    assert tokens[start + 1:start + 1 + N_IMAGE] == [IMG] * N_IMAGE
    assert tokens[start + 1 + N_IMAGE] == EOI and tokens.count(IMG) == N_IMAGE
  assert batch["pixel_values"].shape == (2, 1, S, S, 3)
  np.testing.assert_array_equal(batch["pixel_values"][0, 0], preprocess_image(a, S))
  np.testing.assert_array_equal(batch["pixel_values"][1, 0], preprocess_image(b, S))
  np.testing.assert_array_equal(batch["num_images"], [1, 1])
  single = processor.understanding_batch(["What colour is the circle?"], [a])
  np.testing.assert_array_equal(single["input_ids"][0], ids[0, ids.shape[1] - lengths[0]:])


def test_several_images_per_conversation_and_missing_images(processor):
  a, b = _rng_image(20, 32, seed=3), _rng_image(32, 32, seed=4)
  conversation = [{"role": "user", "content": "<image_placeholder> is one.\n<image_placeholder> is "
                                              "two.\nWhich is brighter?"}]
  batch = processor.understanding_batch([conversation, "Hello there"], [[a, b], None])
  assert batch["pixel_values"].shape == (2, 2, S, S, 3)
  np.testing.assert_array_equal(batch["pixel_values"][0, 0], preprocess_image(a, S))
  np.testing.assert_array_equal(batch["pixel_values"][0, 1], preprocess_image(b, S))
  assert not batch["pixel_values"][1].any()
  np.testing.assert_array_equal(batch["num_images"], [2, 0])
  ids = batch["input_ids"]
  assert (ids[0] == IMG).sum() == 2 * N_IMAGE and (ids[0] == BOI).sum() == 2
  assert (ids[1] == IMG).sum() == 0
  two = processor.understanding_batch(["Which is brighter?"], [[a, b]])
  text = processor.decode(two["input_ids"][0], skip_special_tokens=False)
  assert "<end_of_image>\n<begin_of_image>" in text


def test_pad_to_and_max_length(processor):
  prompts = ["a red circle", "a photo of a cat sitting on a mat"]
  batch = processor.generation_batch(prompts, pad_to=64)
  assert batch["input_ids"].shape == (2, 64)
  assert (batch["input_ids"][:, -1] == BOI).all() and (batch["input_ids"][:, 0] == PAD).all()
  np.testing.assert_array_equal(batch["positions"][:, -1], batch["attention_mask"].sum(1) - 1)
  length = int(batch["attention_mask"].sum(1).max())
  with pytest.raises(ValueError, match=f"prompt of {length} tokens is longer than the context 8; "
                                       "shorten it"):
    processor.generation_batch(prompts, max_length=8)
  with pytest.raises(ValueError, match="padded length 4"):
    processor.generation_batch(["a red circle"], pad_to=4)
  with pytest.raises(ValueError, match="longer than the context"):
    processor.understanding_batch(["What colour?"], [_rng_image(8, 8)], max_length=N_IMAGE)


def test_bad_prompts_are_clear_errors(processor):
  image = _rng_image(8, 8)
  with pytest.raises(ValueError, match="1 <image_placeholder> tags but 2 images"):
    processor.understanding_batch(["<image_placeholder>\nWhich?"], [[image, image]])
  with pytest.raises(ValueError, match="2 <image_placeholder> tags but 1 images"):
    two_tags = "<image_placeholder><image_placeholder>x"
    processor.understanding_batch([[{"role": "user", "content": two_tags}]], [image])
  with pytest.raises(ValueError, match="empty prompt"):
    processor.generation_batch(["a cat", "   "])
  with pytest.raises(ValueError, match="question 0 is empty"):
    processor.understanding_batch([" "], [image])
  with pytest.raises(ValueError, match="turn 2 .user. is empty"):
    processor.understanding_prompt([{"role": "user", "content": "Q"},
                                    {"role": "assistant", "content": "A"},
                                    {"role": "user", "content": ""}])
  with pytest.raises(ValueError, match="alternate"):
    processor.understanding_prompt([{"role": "assistant", "content": "Q"}])
  with pytest.raises(ValueError, match="2 conversations but 1 image"):
    processor.understanding_batch(["a", "b"], [image])
