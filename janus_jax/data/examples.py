"""One example of each data kind -> one unpacked token row (pure functions).

A `Row` holds the batch.py token fields of one example, unpadded, before packing:
`targets[t]` is what position t predicts — the token at t + 1 (a text id, or the VQ code
when position t + 1 is a generated-image position) — and `loss_weights[t]` is 1 exactly
when that next token carries loss:

  understanding  the tokens of every assistant answer and the EOS that ends it
                 (system prompt, user turns, role tags and image runs carry none);
  text           every token after BOS, EOS included;
  t2i            every image code, scored by the gen head (HEAD_IMAGE).

The last position of a row predicts nothing (weight 0): rows end with EOS (text,
understanding), which the position before it predicts, or with the last image code
(t2i; `<end_of_image>` is never generated at sampling time, so it is not trained).

Inputs a row cannot be made from raise `Skip(reason)`; rows cut to `seq_len` say why in
`Row.truncated`. The pipeline counts both (`DataIterator.stats`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from janus_jax.data.batch import HEAD_IMAGE, HEAD_TEXT, KIND_T2I, KIND_TEXT, KIND_UNDERSTANDING
from janus_jax.processor import DEFAULT_SYSTEM_PROMPT, IMAGE_TOKEN


class Skip(Exception):
  """An input that yields no training row; `reason` is a short counter name."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Skipped:
  """The pipeline's in-band marker for an example that was skipped (counted, not packed)."""
  reason: str


@dataclasses.dataclass
class Row:
  """One example as token-level arrays of length L (unpadded, unpacked).

  input_ids, gen_codes, targets, target_head int32 [L]; is_gen bool [L];
  loss_weights float32 [L]; kind: a batch.KINDS value; images float32 [n, S, S, 3] —
  the understanding images in the order of their placeholder runs; truncated: "" or the
  reason the example was cut to fit the row.
  """
  input_ids: np.ndarray
  gen_codes: np.ndarray
  is_gen: np.ndarray
  targets: np.ndarray
  target_head: np.ndarray
  loss_weights: np.ndarray
  kind: int
  images: np.ndarray
  truncated: str = ""

  def __len__(self) -> int:
    return len(self.input_ids)


def row_from_sequence(input_ids, is_loss, kind: int, *, is_gen=None, gen_codes=None,
                      images=None, image_size: int = 0, truncated: str = "") -> Row:
  """Next-token targets for a token sequence.

  input_ids [L] int; is_loss [L] bool: token t is a loss-bearing target (so position t-1
  gets weight 1); is_gen/gen_codes [L]: positions fed with a VQ code instead of a token.
  """
  input_ids = np.asarray(input_ids, np.int32)
  n = len(input_ids)
  is_gen = np.zeros(n, bool) if is_gen is None else np.asarray(is_gen, bool)
  gen_codes = np.zeros(n, np.int32) if gen_codes is None else np.asarray(gen_codes, np.int32)
  is_loss = np.asarray(is_loss, bool)
  targets = np.zeros(n, np.int32)
  target_head = np.full(n, HEAD_TEXT, np.int32)
  weights = np.zeros(n, np.float32)
  targets[:-1] = np.where(is_gen[1:], gen_codes[1:], input_ids[1:])
  target_head[:-1] = np.where(is_gen[1:], HEAD_IMAGE, HEAD_TEXT)
  weights[:-1] = is_loss[1:]
  if images is None or len(images) == 0:
    images = np.zeros((0, image_size, image_size, 3), np.float32)
  return Row(input_ids, np.where(is_gen, gen_codes, 0).astype(np.int32), is_gen, targets,
             target_head, weights, kind, np.asarray(images, np.float32), truncated)


def _tokens(processor, text: str) -> list[int]:
  return processor.tokenizer.encode(text, add_special_tokens=False).ids


# --- text ------------------------------------------------------------------------------------
def text_row(processor, text: str, *, seq_len: int) -> Row:
  """Plain text: BOS, the tokens, EOS; loss on every token after BOS.

  Longer texts are cut to `seq_len` (the EOS is then lost; truncated = "text_too_long").
  """
  if not isinstance(text, str) or not text.strip():
    raise Skip("empty_text")
  ids = processor.encode(text, expand_images=False) + [processor.eos_token_id]
  if processor.image_token_id in ids:
    raise Skip("image_tag_in_text", "plain text may not hold <image_placeholder> tags")
  truncated = ""
  if len(ids) > seq_len:
    ids, truncated = ids[:seq_len], "text_too_long"
  return row_from_sequence(ids, np.ones(len(ids), bool), KIND_TEXT, truncated=truncated,
                           image_size=processor.image_size)


# --- text-to-image ---------------------------------------------------------------------------
def generation_prompt_ids(processor, caption: str, *, uncond: bool = False) -> list[int]:
  """The generation template as token ids: BOS ... `<|Assistant|>:` `<begin_of_image>`.

  uncond: the unconditional prompt of classifier-free guidance — the same ids with every
  token but BOS and `<begin_of_image>` replaced by pad, keeping the length, exactly as
  sampling builds its unconditional rows (JANUS.md §4.1).
  """
  if not isinstance(caption, str) or not caption.strip():
    raise Skip("empty_caption")
  ids = processor.encode(processor.generation_prompt(caption), expand_images=False)
  if processor.image_token_id in ids:
    raise Skip("image_tag_in_caption", "captions may not hold <image_placeholder> tags")
  if uncond:
    ids = [ids[0]] + [processor.pad_token_id] * (len(ids) - 2) + [ids[-1]]
  return ids


def t2i_row(processor, caption: str, codes, *, seq_len: int, uncond: bool = False) -> Row:
  """Caption -> generation template -> image codes; loss on the codes, via the gen head.

  codes: int [N] VQ codes of the image (row-major). The codes enter at `is_gen`
  positions; position t predicts code t+1, the `<begin_of_image>` position the first one.
  A prompt too long for the row loses caption tokens (truncated = "caption_too_long").
  """
  codes = np.asarray(codes, np.int32).reshape(-1)
  prompt = generation_prompt_ids(processor, caption, uncond=uncond)
  truncated = ""
  if len(prompt) + len(codes) > seq_len:
    tail = _tokens(processor, "\n\n" + processor.roles[1] + ":") + [processor.boi_token_id]
    keep = seq_len - len(codes) - len(tail)
    if keep < 2:
      raise Skip("too_long", f"{len(codes)} image codes do not fit a row of {seq_len}")
    prompt, truncated = prompt[:keep] + tail, "caption_too_long"
    if uncond:
      prompt = [prompt[0]] + [processor.pad_token_id] * (len(prompt) - 2) + [prompt[-1]]
  n = len(prompt) + len(codes)
  is_gen = np.zeros(n, bool)
  is_gen[len(prompt):] = True
  ids = np.concatenate([prompt, np.full(len(codes), processor.pad_token_id)])
  gen_codes = np.concatenate([np.zeros(len(prompt), np.int32), codes])
  return row_from_sequence(ids, is_gen, KIND_T2I, is_gen=is_gen, gen_codes=gen_codes,
                           truncated=truncated, image_size=processor.image_size)


# --- understanding ---------------------------------------------------------------------------
def conversation_turns(conversation: Sequence[dict]) -> list[tuple[str, str]]:
  """Validated (role, content) pairs, user first, alternating, ending with an answer."""
  turns = []
  for i, turn in enumerate(conversation):
    role = str(turn.get("role", "")).lower().strip("<|>")
    expected = ("user", "assistant")[i % 2]
    if role != expected:
      raise Skip("bad_roles", f"turn {i} is {turn.get('role')!r}, expected {expected}")
    content = turn.get("content")
    if not isinstance(content, str) or not content.strip():
      raise Skip("empty_turn", f"turn {i} ({role}) is empty")
    turns.append((role, content.strip()))
  if len(turns) % 2:                     # a trailing question without its answer: no loss
    turns = turns[:-1]
  if not turns:
    raise Skip("no_assistant_turn")
  return turns


def understanding_tokens(processor, conversation: Sequence[dict], num_images: int,
                         system_prompt: str = DEFAULT_SYSTEM_PROMPT):
  """(ids, is_loss) of a conversation in the understanding template, images expanded.

  The text is that of `Processor.understanding_prompt` (JANUS.md §3.3); each answer is
  tokenized apart from the prompt before it, as the model generates it after
  `<|Assistant|>:`. With images but no `<image_placeholder>` tags, one tag per image is
  put in front of the first question (as `Processor.understanding_batch` does).
  """
  turns = conversation_turns(conversation)
  if num_images and not any(IMAGE_TOKEN in c for _, c in turns):
    turns[0] = ("user", f"{IMAGE_TOKEN}\n" * num_images + turns[0][1])
  user, assistant = processor.roles
  ids, is_loss = [processor.bos_token_id], [False]
  prefix = system_prompt + "\n\n" if system_prompt else ""
  for i in range(0, len(turns), 2):
    question, answer = turns[i][1], turns[i + 1][1]
    if IMAGE_TOKEN in answer:
      raise Skip("image_in_answer")
    prompt = _tokens(processor, f"{prefix}{user}: {question}\n\n{assistant}:")
    reply = _tokens(processor, " " + answer) + [processor.eos_token_id]
    ids += prompt + reply
    is_loss += [False] * len(prompt) + [True] * len(reply)
    prefix = ""
  placeholders = ids.count(processor.image_token_id)
  if placeholders != num_images:
    raise Skip("image_count_mismatch", f"{placeholders} tags for {num_images} images")
  out_ids, out_loss = [], []
  run = ([processor.boi_token_id] + [processor.image_token_id] * processor.num_image_tokens
         + [processor.eoi_token_id])
  for token, loss in zip(ids, is_loss):
    if token == processor.image_token_id:
      out_ids += run
      out_loss += [False] * len(run)
    else:
      out_ids.append(token)
      out_loss.append(loss)
  return out_ids, out_loss


def understanding_row(processor, conversation: Sequence[dict], images: Sequence[np.ndarray],
                      *, seq_len: int, max_images: int,
                      system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> Row:
  """Images + a multi-turn conversation; loss on the answers and their EOS.

  conversation: [{"role": "user"|"assistant", "content": str}, ...]; images: preprocessed
  float32 [S, S, 3] each (`preprocess_image`), in the order of their tags. A conversation
  longer than the row is cut before the image run or token at `seq_len` (images after the
  cut are dropped; truncated = "conversation_too_long"); skipped if no answer token is left.
  """
  if len(images) > max_images:
    raise Skip("too_many_images", f"{len(images)} images, rows hold {max_images}")
  ids, is_loss = understanding_tokens(processor, conversation, len(images), system_prompt)
  truncated = ""
  if len(ids) > seq_len:
    image = np.asarray(ids) == processor.image_token_id
    # Every image run is boi + P image tokens + eoi; never cut one.
    starts = np.nonzero(image[1:] & ~image[:-1])[0]          # boi positions
    ends = starts + processor.num_image_tokens + 2
    split = starts[(starts < seq_len) & (ends > seq_len)]
    cut = int(split[0]) if len(split) else seq_len
    ids, is_loss, truncated = ids[:cut], is_loss[:cut], "conversation_too_long"
    images = images[:int(np.sum(ends <= cut))]
    if not any(is_loss[1:]):
      raise Skip("too_long", "no answer token fits the row")
  return row_from_sequence(ids, is_loss, KIND_UNDERSTANDING, images=images,
                           image_size=processor.image_size, truncated=truncated)
