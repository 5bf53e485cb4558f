"""Rows of each data kind: exactly the right tokens carry loss, through the right head; the
prompts are those of inference; the unconditional t2i prompt comes at the configured rate."""
import grain
import numpy as np
import pytest

from janus_jax.data import examples as ex
from janus_jax.data.batch import HEAD_IMAGE, HEAD_TEXT, KIND_T2I, KIND_TEXT, KIND_UNDERSTANDING
from janus_jax.data.pipeline import ExampleTransform, default_data_config
from tests import test_data_support as S


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = S.tiny_config()
  return config, S.tiny_processor(str(tmp_path_factory.mktemp("tok")), config)


def _tokens(p, text):
  return p.tokenizer.encode(text, add_special_tokens=False).ids


def test_text_row_predicts_every_token_after_bos_with_the_text_head(setup):
  _, p = setup
  row = ex.text_row(p, "The quick brown fox jumps", seq_len=64)
  want = [p.bos_token_id] + _tokens(p, "The quick brown fox jumps") + [p.eos_token_id]
  np.testing.assert_array_equal(row.input_ids, want)
  np.testing.assert_array_equal(row.targets[:-1], want[1:])
  np.testing.assert_array_equal(row.loss_weights, [1] * (len(want) - 1) + [0])
  assert (row.target_head == HEAD_TEXT).all() and not row.is_gen.any()
  assert row.kind == KIND_TEXT and row.truncated == "" and row.images.shape[0] == 0


def test_text_longer_than_the_row_is_truncated_and_marked(setup):
  _, p = setup
  row = ex.text_row(p, "The quick brown fox jumps over the lazy dog. " * 20, seq_len=32)
  assert len(row) == 32 and row.truncated == "text_too_long"
  assert row.input_ids[-1] != p.eos_token_id and row.loss_weights[:-1].all()
  with pytest.raises(ex.Skip, match="empty_text"):
    ex.text_row(p, "  \n", seq_len=32)


CONVERSATION = [
    {"role": "user", "content": "<image_placeholder>\nWhat colour is the circle?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "And here? <image_placeholder>"},
    {"role": "assistant", "content": "two shapes"},
]


def _images(p, n):
  return [np.full((p.image_size, p.image_size, 3), 0.1 * (k + 1), np.float32) for k in range(n)]


def test_understanding_loss_only_on_answers_and_their_eos(setup):
  _, p = setup
  row = ex.understanding_row(p, CONVERSATION, _images(p, 2), seq_len=512, max_images=4)
  weighted = row.targets[row.loss_weights > 0]
  want = (_tokens(p, " red") + [p.eos_token_id] + _tokens(p, " two shapes") + [p.eos_token_id])
  np.testing.assert_array_equal(weighted, want)
  assert set(np.unique(row.loss_weights)) == {0.0, 1.0}
  assert (row.target_head == HEAD_TEXT).all() and not row.is_gen.any()
  # Each position with loss predicts the token right after it.
  np.testing.assert_array_equal(row.targets[:-1], row.input_ids[1:])
  # Two image runs: <begin_of_image>, num_image_tokens placeholders, <end_of_image>.
  assert (row.input_ids == p.image_token_id).sum() == 2 * p.num_image_tokens
  assert (row.input_ids == p.boi_token_id).sum() == 2 == (row.input_ids == p.eoi_token_id).sum()
  assert row.images.shape == (2, p.image_size, p.image_size, 3)
  np.testing.assert_array_equal(row.images[1], _images(p, 2)[1])
  assert row.kind == KIND_UNDERSTANDING and row.loss_weights[-1] == 0


def test_understanding_prompt_is_the_inference_prompt(setup):
  _, p = setup
  row = ex.understanding_row(p, CONVERSATION, _images(p, 2), seq_len=512, max_images=4)
  # Up to the last answer the row is what the model sees when asked the last question.
  history = CONVERSATION[:3]
  prompt = p.encode(p.understanding_prompt(history))
  np.testing.assert_array_equal(row.input_ids[:len(prompt)], prompt)
  first = row.loss_weights.tolist().index(1.0)
  single = p.encode(p.understanding_prompt(CONVERSATION[:1]))
  assert first == len(single) - 1          # the `<|Assistant|>:` position predicts the answer
  np.testing.assert_array_equal(row.input_ids[:len(single)], single)


@pytest.mark.parametrize("conversation,images,reason", [
    ([{"role": "user", "content": "hi"}], 0, "no_assistant_turn"),
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}], 0, "bad_roles"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], 0, "empty_turn"),
    (CONVERSATION, 1, "image_count_mismatch"),
    (CONVERSATION, 5, "too_many_images"),
])
def test_understanding_inputs_without_a_row_are_skipped(setup, conversation, images, reason):
  _, p = setup
  with pytest.raises(ex.Skip) as e:
    ex.understanding_row(p, conversation, _images(p, images), seq_len=512, max_images=4)
  assert e.value.reason == reason


def test_understanding_truncation_never_cuts_an_image_run(setup):
  _, p = setup
  full = ex.understanding_row(p, CONVERSATION, _images(p, 2), seq_len=512, max_images=4)
  second_run = np.flatnonzero(full.input_ids == p.boi_token_id)[1]
  row = ex.understanding_row(p, CONVERSATION, _images(p, 2), seq_len=int(second_run) + 5,
                             max_images=4)
  assert row.truncated == "conversation_too_long" and len(row) == second_run
  assert row.images.shape[0] == 1 and (row.input_ids == p.boi_token_id).sum() == 1
  assert row.loss_weights.sum() > 0


def test_t2i_loss_only_on_image_codes_through_the_gen_head(setup):
  config, p = setup
  codes = np.random.default_rng(0).integers(0, config.vq.codebook_size, config.vq.num_tokens)
  row = ex.t2i_row(p, "a red circle", codes, seq_len=512)
  prompt = p.generation_batch(["a red circle"])["input_ids"][0]   # what sampling feeds
  n = len(prompt)
  np.testing.assert_array_equal(row.input_ids[:n], prompt)
  assert prompt[-1] == p.boi_token_id and len(row) == n + len(codes)
  np.testing.assert_array_equal(row.is_gen, [False] * n + [True] * len(codes))
  np.testing.assert_array_equal(row.gen_codes[n:], codes)
  # Position t predicts code t - n + 1: the <begin_of_image> position the first code.
  np.testing.assert_array_equal(row.targets[n - 1:-1], codes)
  np.testing.assert_array_equal(row.loss_weights, [0] * (n - 1) + [1] * len(codes) + [0])
  np.testing.assert_array_equal(row.target_head == HEAD_IMAGE, row.loss_weights > 0)
  assert row.kind == KIND_T2I


def test_unconditional_prompt_is_the_one_sampling_builds(setup):
  config, p = setup
  codes = np.zeros(config.vq.num_tokens, np.int32)
  cond = ex.t2i_row(p, "a photo of a cat", codes, seq_len=512)
  uncond = ex.t2i_row(p, "a photo of a cat", codes, seq_len=512, uncond=True)
  assert len(uncond) == len(cond)
  n = len(cond) - len(codes)
  keep = (cond.input_ids[:n] == p.bos_token_id) | (cond.input_ids[:n] == p.boi_token_id)
  np.testing.assert_array_equal(uncond.input_ids[:n],
                                np.where(keep, cond.input_ids[:n], p.pad_token_id))
  assert uncond.input_ids[0] == p.bos_token_id and uncond.input_ids[n - 1] == p.boi_token_id
  for field in ("target_head", "loss_weights", "is_gen", "gen_codes"):
    np.testing.assert_array_equal(getattr(uncond, field), getattr(cond, field))
  np.testing.assert_array_equal(uncond.targets[n - 1:], cond.targets[n - 1:])


def test_long_captions_are_cut_keeping_the_template(setup):
  config, p = setup
  codes = np.zeros(config.vq.num_tokens, np.int32)
  row = ex.t2i_row(p, "a red circle above a blue square " * 40, codes, seq_len=300)
  assert len(row) == 300 and row.truncated == "caption_too_long"
  n = 300 - len(codes)
  assert row.input_ids[n - 1] == p.boi_token_id and row.loss_weights.sum() == len(codes) - 1 + 1
  with pytest.raises(ex.Skip, match="empty_caption"):
    ex.t2i_row(p, "", codes, seq_len=512)


def _t2i_rows(setup, seed, n=2000, uncond_prob=0.1):
  config, p = setup
  opts = default_data_config().to_dict()
  opts.update(seq_len=512, uncond_prob=uncond_prob)
  transform = ExampleTransform("t2i", {"caption": "caption", "codes": "codes", "image": "image"},
                               p, config, opts)
  codes = np.zeros(config.vq.num_tokens, np.int32)
  records = [{"caption": f"a cat number {i}".encode(), "codes": codes} for i in range(n)]
  ds = grain.MapDataset.source(records).random_map(transform, seed=seed)
  return [ds[i] for i in range(n)]


def test_unconditional_replacement_happens_at_the_configured_rate(setup):
  _, p = setup
  rows = _t2i_rows(setup, seed=3)
  uncond = np.array([r.input_ids[1] == p.pad_token_id for r in rows])
  rate, sigma = uncond.mean(), np.sqrt(0.1 * 0.9 / len(rows))
  assert abs(rate - 0.1) < 3 * sigma, rate
  again = np.array([r.input_ids[1] == p.pad_token_id for r in _t2i_rows(setup, seed=3)])
  np.testing.assert_array_equal(uncond, again)                     # deterministic for a seed
  other = np.array([r.input_ids[1] == p.pad_token_id for r in _t2i_rows(setup, seed=4)])
  assert (other != uncond).any()
  none = [r.input_ids[1] == p.pad_token_id for r in _t2i_rows(setup, 3, 300, uncond_prob=0.0)]
  assert not any(none)


def test_bad_t2i_records_become_skip_markers(setup):
  config, p = setup
  opts = {**default_data_config().to_dict(), "seq_len": 512}
  transform = ExampleTransform("t2i", {"caption": "caption", "codes": "codes", "image": "image"},
                               p, config, opts)
  rng = np.random.default_rng(0)
  good = np.zeros(config.vq.num_tokens, np.int32)
  cases = {"empty_caption": {"caption": b" ", "codes": good},
           "bad_codes": {"caption": b"a cat", "codes": good[:10]},
           "bad_record": {"caption": b"a cat"}}
  for reason, record in cases.items():
    assert transform.random_map(record, rng) == ex.Skipped(reason)
  too_big = good + config.vq.codebook_size
  assert transform.random_map({"caption": b"x", "codes": too_big}, rng) == ex.Skipped("bad_codes")
