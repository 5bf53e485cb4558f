"""Prompts, tokens and pixels for Janus: the VLChatProcessor of JANUS.md §3, in numpy/PIL.

`Processor.understanding_batch` turns (conversation, images) pairs into the arrays
`Janus.__call__` takes; `Processor.generation_batch` does the same for text-to-image
prompts. Both pad on the LEFT with the pad id, as the reference does, so the last
column is every row's last prompt token.

Image conversion to RGB follows transformers' `JanusImageProcessor` (do_convert_rgb):
transparency (RGBA, LA, PA, palette or L with a transparent colour) is composited onto
white — the original Janus code calls `.convert("RGB")`, which instead keeps the colours
stored under transparent pixels. 16-bit inputs (PIL "I;16*"/"I", numpy uint16) are
scaled to 8 bits with round(v / 257); PIL's own conversion (and therefore transformers'
and the original's) clips them at 255, which turns almost any real 16-bit image white.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

BOS_TOKEN = "<｜begin▁of▁sentence｜>"   # fullwidth bars U+FF5C, U+2581 spaces
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"
SPECIAL_TOKENS = {"bos_token_id": BOS_TOKEN, "eos_token_id": EOS_TOKEN, "pad_token_id": PAD_TOKEN,
                  "image_token_id": IMAGE_TOKEN, "boi_token_id": BOI_TOKEN,
                  "eoi_token_id": EOI_TOKEN}
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language.")
# Janus-Pro chats as "<|User|>"/"<|Assistant|>"; Janus-1.3B was trained with "User"/"Assistant".
ROLES = {"pro": ("<|User|>", "<|Assistant|>"), "janus": ("User", "Assistant")}
BACKGROUND = (127, 127, 127)   # int(0.5 * 255) per channel: the image mean
MIN_SIZE = 14
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
IMAGE_POSITIONS = ("before", "after")   # where a plain question's pictures go


def sft_prompt(messages: Sequence[tuple[str, str]], system_prompt: str = "") -> str:
  """SeparatorStyle.DeepSeek (JANUS.md §3.3): messages are (role string, content) pairs.

  An empty message renders as "role:" (the generation cue); the result is .strip()'ed.
  """
  separators = ("\n\n", EOS_TOKEN)
  text = system_prompt + separators[0] if system_prompt else ""
  for i, (role, message) in enumerate(messages):
    message = message.strip()
    text += role + ": " + message + separators[i % 2] if message else role + ":"
  return text.strip()


# --- images -------------------------------------------------------------------------------
def load_image(image: Any) -> Image.Image:
  """A PIL image, a file path, or a uint8/uint16 array [H, W, 3|4] or [H, W] -> RGB PIL image."""
  if isinstance(image, (str, os.PathLike)):
    if not os.path.isfile(image):
      raise ValueError(f"image file {os.fspath(image)!r} does not exist.")
    try:
      with Image.open(image) as f:
        f.load()
        image = ImageOps.exif_transpose(f)   # as transformers' load_image does for files
    except Exception as e:  # PIL raises several types for corrupt files
      raise ValueError(f"cannot read image file {os.fspath(image)!r}: {e}") from None
  if isinstance(image, np.ndarray):
    image = _array_to_pil(image)
  if not isinstance(image, Image.Image):
    raise ValueError(f"expected a PIL image, a file path or a numpy array, got "
                     f"{type(image).__name__}.")
  if image.mode in _SIXTEEN_BIT_MODES:
    image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
  if "A" in image.getbands() or "transparency" in image.info:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
  if array.dtype == np.uint8:
    return array
  if array.dtype.kind not in "ui" or array.dtype.itemsize > 4:
    raise ValueError(f"image arrays must be uint8 or uint16, got {array.dtype}.")
  wide = np.clip(array.astype(np.int64), 0, 65535)
  return ((wide * 255 + 32767) // 65535).astype(np.uint8)   # round(v / 257)


def _array_to_pil(array: np.ndarray) -> Image.Image:
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    return Image.fromarray(_to_uint8(array), mode="L")
  if array.ndim == 3 and array.shape[-1] in (3, 4):
    return Image.fromarray(_to_uint8(array), mode="RGB" if array.shape[-1] == 3 else "RGBA")
  raise ValueError(f"image arrays must be [H, W], [H, W, 3] or [H, W, 4]; got {array.shape}.")


def _normalize(image: Image.Image) -> np.ndarray:
  """uint8 RGB -> float32 [H, W, 3] in [-1, 1]: rescale 1/255, then (x - 0.5) / 0.5."""
  return ((np.asarray(image, dtype=np.float64) / 255.0 - 0.5) / 0.5).astype(np.float32)


def resized_size(height: int, width: int, image_size: int, min_size: int = MIN_SIZE):
  """(h, w) with the long side = image_size; truncation as the original (transformers rounds)."""
  long = max(height, width)
  return (max(int(height / long * image_size), min_size),
          max(int(width / long * image_size), min_size))


def preprocess_image(image: Any, image_size: int = 384, min_size: int = MIN_SIZE) -> np.ndarray:
  """Understanding preprocessing (JANUS.md §3.1) -> float32 [S, S, 3] in [-1, 1].

  Long side to S with antialiased bicubic (PIL), centred on a (127, 127, 127) square.
  """
  image = load_image(image)
  height, width = resized_size(image.height, image.width, image_size, min_size)
  image = image.resize((width, height), Image.BICUBIC)
  side = max(height, width)
  canvas = Image.new("RGB", (side, side), BACKGROUND)
  canvas.paste(image, ((side - width) // 2, (side - height) // 2))
  return _normalize(canvas)


def preprocess_generation_image(image: Any, size: int = 384) -> np.ndarray:
  """Generation training data (Janus-Pro §3.1): short side to `size`, centre crop -> [S, S, 3].

  Sizes and crop offsets as torchvision's Resize(size) + CenterCrop(size); float32 in [-1, 1].
  """
  image = load_image(image)
  short, long = sorted((image.width, image.height))
  scaled = max(int(size * long / short), size)
  width, height = (scaled, size) if image.width >= image.height else (size, scaled)
  image = image.resize((width, height), Image.BICUBIC)
  left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
  return _normalize(image.crop((left, top, left + size, top + size)))


# --- the processor ------------------------------------------------------------------------
class Processor:
  """Tokenizer + prompt templates + image preprocessing for one checkpoint.

  tokenizer: a `tokenizers.Tokenizer`; config: the `JanusConfig` whose special-token ids
  must agree with the tokenizer's vocabulary. role_style: "pro" (`<|User|>`) or "janus"
  (`User`, Janus-1.3B); None picks "pro" when `<|User|>` is a token of the vocabulary.
  """

  def __init__(self, tokenizer, config, role_style: str | None = None,
               system_prompt: str = DEFAULT_SYSTEM_PROMPT, image_position: str = "before"):
    self.tokenizer, self.config = tokenizer, config
    self.system_prompt = system_prompt
    if image_position not in IMAGE_POSITIONS:
      raise ValueError(f"image_position={image_position!r}; choose one of {IMAGE_POSITIONS}.")
    self.image_position = image_position
    tokenizer.no_padding()
    tokenizer.no_truncation()
    for field, tag in SPECIAL_TOKENS.items():
      found, expected = tokenizer.token_to_id(tag), getattr(config, field)
      if found is None:
        raise ValueError(f"the tokenizer has no {tag!r} token; it is not a Janus tokenizer.")
      if found != expected:
        raise ValueError(f"{field} mismatch: the tokenizer gives {tag!r} id {found} but the "
                         f"config says {expected}; fix config.json or reconvert the checkpoint.")
      setattr(self, field, found)
    if role_style is None:
      role_style = "pro" if tokenizer.token_to_id(ROLES["pro"][0]) is not None else "janus"
    if role_style not in ROLES:
      raise ValueError(f"role_style={role_style!r}; choose one of {sorted(ROLES)}.")
    self.role_style = role_style
    self.roles = ROLES[role_style]
    self.image_size = config.vision.image_size
    self.num_image_tokens = config.num_image_tokens

  @classmethod
  def from_directory(cls, path: str, config, role_style: str | None = None) -> "Processor":
    """Loads `path/tokenizer.json`; `role_style` may also come from processor_config.json."""
    from tokenizers import Tokenizer
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
      raise ValueError(f"{path} has no tokenizer.json; copy the checkpoint's tokenizer files.")
    extra = os.path.join(path, "processor_config.json")
    options = {}
    if os.path.isfile(extra):
      with open(extra) as f:
        options = json.load(f)
      role_style = role_style or options.get("role_style")
    try:
      tokenizer = Tokenizer.from_file(file)
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
      raise ValueError(f"cannot read {file}: {e}") from None
    # A model trained with another system prompt (or none), or with its pictures after the
    # question, says so in processor_config.json.
    return cls(tokenizer, config, role_style,
               options.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
               options.get("image_position", "before"))

  def place_images(self, question: str, num_images: int) -> str:
    """A plain question -> its first user turn: one placeholder line per image before the
    question (Janus' layout) or after it (image_position "after"); a question that has
    placeholders keeps them where they are."""
    if IMAGE_TOKEN in question or not num_images:
      return question
    tags = f"{IMAGE_TOKEN}\n" * num_images
    return tags + question if self.image_position == "before" else question + "\n" + tags.rstrip("\n")

  # --- text --------------------------------------------------------------------------------
  def understanding_prompt(self, conversation: Sequence[dict],
                           system_prompt: str | None = None) -> str:
    """[{"role": "user"|"assistant", "content": str}, ...] -> prompt text (BOS not included).

    Turns alternate user/assistant starting with the user; an empty assistant turn is
    appended after a final user turn so the prompt ends with the assistant cue.
    """
    messages = []
    for i, turn in enumerate(conversation):
      role = str(turn.get("role", "")).lower()
      expected = ("user", "assistant")[i % 2]
      if role not in (expected, self.roles[i % 2].lower()):
        raise ValueError(f"turn {i} has role {turn.get('role')!r}; conversations alternate "
                         "user/assistant turns, starting with the user.")
      content = turn.get("content") or ""
      if not content.strip() and (expected == "user" or i < len(conversation) - 1):
        raise ValueError(f"turn {i} ({expected}) is empty; give a non-empty question.")
      messages.append((self.roles[i % 2], content))
    if not messages:
      raise ValueError("empty conversation; give at least one user question.")
    if len(messages) % 2:
      messages.append((self.roles[1], ""))
    return sft_prompt(messages, self.system_prompt if system_prompt is None else system_prompt)

  def generation_prompt(self, text: str) -> str:
    """Text-to-image prompt (JANUS.md §3.4), no system prompt:
    "<|User|>: {text}\\n\\n<|Assistant|>:<begin_of_image>"."""
    if not text or not text.strip():
      raise ValueError("empty prompt; describe the image to generate.")
    return sft_prompt([(self.roles[0], text), (self.roles[1], "")]) + BOI_TOKEN

  def encode(self, text: str, expand_images: bool = True) -> list[int]:
    """Text -> ids with BOS first (exactly once, whatever the tokenizer's post-processor).

    With expand_images each `<image_placeholder>` id becomes
    [boi] + num_image_tokens x [image] + [eoi], as the reference's add_image_token.
    """
    ids = [self.bos_token_id] + self.tokenizer.encode(text, add_special_tokens=False).ids
    return self._expand_images(ids) if expand_images else ids

  def _expand_images(self, ids: list[int]) -> list[int]:
    image_run = ([self.boi_token_id] + [self.image_token_id] * self.num_image_tokens
                 + [self.eoi_token_id])
    out = []
    for token in ids:
      out.extend(image_run if token == self.image_token_id else (token,))
    return out

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    """Ids (any int sequence or array) -> text; special tokens dropped by default."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if skip_special_tokens:
      special = {getattr(self, field) for field in SPECIAL_TOKENS}
      ids = [i for i in ids if i not in special]
    return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

  # --- batches ------------------------------------------------------------------------------
  def preprocess_image(self, image: Any) -> np.ndarray:
    """One image -> float32 [S, S, 3] in [-1, 1], S = config.vision.image_size."""
    return preprocess_image(image, self.image_size)

  def understanding_batch(self, conversations: Sequence, images: Sequence, *,
                          system_prompt: str | None = None, pad_to: int | None = None,
                          max_length: int | None = None) -> dict[str, np.ndarray]:
    """Conversations with their images -> left-padded model inputs.

    conversations[b]: a question string (one `<image_placeholder>\\n` per image is put
    in front unless it already has placeholders) or a list of turns (see
    understanding_prompt). images[b]: None, one image or a list of them, in the order of
    the placeholders. Returns input_ids, attention_mask, positions int32 [B, T];
    pixel_values float32 [B, N, S, S, 3] with N = max(1, most images in a row), zeros
    where a row has fewer; num_images int32 [B].
    """
    if len(conversations) != len(images):
      raise ValueError(f"{len(conversations)} conversations but {len(images)} image entries.")
    rows, pixels = [], []
    for b, (conversation, row_images) in enumerate(zip(conversations, images)):
      row_images = [] if row_images is None else (
          list(row_images) if isinstance(row_images, (list, tuple)) else [row_images])
      if isinstance(conversation, str):
        if not conversation.strip():
          raise ValueError(f"question {b} is empty; ask something about the image.")
        conversation = [{"role": "user",
                         "content": self.place_images(conversation, len(row_images))}]
      ids = self.encode(self.understanding_prompt(conversation, system_prompt), expand_images=False)
      placeholders = ids.count(self.image_token_id)
      if placeholders != len(row_images):
        raise ValueError(f"conversation {b} has {placeholders} {IMAGE_TOKEN} tags but "
                         f"{len(row_images)} images; give one image per tag, in order.")
      rows.append(self._expand_images(ids))
      pixels.append([self.preprocess_image(image) for image in row_images])
    batch = self._pad(rows, pad_to, max_length)
    size = self.image_size
    pixel_values = np.zeros((len(rows), max(1, *map(len, pixels)), size, size, 3), np.float32)
    for b, row in enumerate(pixels):
      if row:
        pixel_values[b, :len(row)] = np.stack(row)
    batch["pixel_values"] = pixel_values
    batch["num_images"] = np.array([len(row) for row in pixels], np.int32)
    return batch

  def generation_batch(self, prompts: Sequence[str], *, pad_to: int | None = None,
                       max_length: int | None = None) -> dict[str, np.ndarray]:
    """Text-to-image prompts -> input_ids, attention_mask, positions int32 [B, T], left-padded.

    Each row ends with `<begin_of_image>`; placeholders in prompts are not expanded.
    """
    if isinstance(prompts, str):
      prompts = [prompts]
    rows = [self.encode(self.generation_prompt(p), expand_images=False) for p in prompts]
    return self._pad(rows, pad_to, max_length)

  def _pad(self, rows: list[list[int]], pad_to: int | None, max_length: int | None):
    if not rows:
      raise ValueError("empty batch; give at least one prompt.")
    longest = max(map(len, rows))
    if max_length is not None and longest > max_length:
      raise ValueError(f"prompt of {longest} tokens is longer than the context {max_length}; "
                       "shorten it.")
    if pad_to is not None and longest > pad_to:
      raise ValueError(f"prompt of {longest} tokens does not fit the padded length {pad_to}.")
    length = longest if pad_to is None else pad_to
    input_ids = np.full((len(rows), length), self.pad_token_id, np.int32)
    attention_mask = np.zeros((len(rows), length), np.int32)
    for b, row in enumerate(rows):
      input_ids[b, length - len(row):] = row
      attention_mask[b, length - len(row):] = 1
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "positions": positions}
