"""KV-cache decoding and remat against the plain forward pass (float32, tiny config)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import janus_jax
from janus_jax import Janus, JanusConfig
from janus_jax.modules.llm import default_positions, init_cache

ATOL = 1e-5   # same program up to summation order; logits O(1)


@pytest.fixture(scope="module")
def tiny():
  config = JanusConfig.preset("tiny")
  return config, janus_jax.init_params(config, jax.random.key(0))


def _full_logits(config, params, ids, mask):
  return np.asarray(Janus(config).apply({"params": params}, ids, attention_mask=mask))


def test_prefill_then_single_steps_equal_full_forward(tiny):
  config, params = tiny
  model = Janus(config)
  rng = np.random.default_rng(0)
  b, t, prompt, slots = 2, 12, 7, 16
  ids = jnp.asarray(rng.integers(10, config.llm.vocab_size, (b, t)), jnp.int32)
  mask = np.ones((b, t), np.int32)
  mask[1, :3] = 0                                   # left padding on row 1
  mask = jnp.asarray(mask)
  want = _full_logits(config, params, ids, mask)

  positions = default_positions(mask)
  key_mask = jnp.concatenate([mask, jnp.ones((b, slots - t), jnp.int32)], axis=1)
  cache = init_cache(config.llm, b, slots)

  def step(cache, index, tokens, pos):
    def fn(module):
      hidden, cache2 = module.decode(module.embed(tokens), pos, key_mask, cache, index)
      return module.text_logits(hidden), cache2
    return model.apply({"params": params}, method=fn)

  logits, cache = jax.jit(step)(cache, 0, ids[:, :prompt], positions[:, :prompt])
  got = [np.asarray(logits)]
  one_step = jax.jit(step)
  for i in range(prompt, t):
    logits, cache = one_step(cache, jnp.int32(i), ids[:, i:i + 1], positions[:, i:i + 1])
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  valid = np.asarray(mask).astype(bool)
  assert np.max(np.abs(got - want)[valid]) <= ATOL


@pytest.mark.parametrize("policy", ["full", "dots", "save_nothing"])
def test_remat_policies_give_the_same_logits_and_grads(tiny, policy):
  config, params = tiny
  ids = jnp.asarray(np.random.default_rng(1).integers(10, 500, (2, 9)), jnp.int32)

  def loss(p, cfg):
    return jnp.mean(Janus(cfg).apply({"params": p}, ids) ** 2)

  base, base_grad = jax.value_and_grad(loss)(params, config)
  val, grad = jax.value_and_grad(loss)(params, config.replace(remat_policy=policy))
  assert abs(float(val) - float(base)) <= 1e-6 * abs(float(base))
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grad, base_grad)
  assert max(jax.tree.leaves(diffs)) <= 1e-6


@pytest.mark.parametrize("unroll", [2, 64])
def test_unrolled_layer_stacks_give_the_same_values_and_grads(tiny, unroll):
  """scan_unroll (2: two layers per loop iteration; 64: no loop) changes the program, not
  the arithmetic: text logits, image features and every gradient as with the loop."""
  config, params = tiny
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.integers(10, 500, (2, 9)), jnp.int32)
  size = config.vision.image_size
  pixels = jnp.asarray(rng.uniform(-1, 1, (2, size, size, 3)), jnp.float32)

  def loss(p, cfg):
    model = Janus(cfg)
    features = model.apply({"params": p}, pixels, method="image_features")
    return jnp.mean(model.apply({"params": p}, ids) ** 2) + jnp.mean(features ** 2)

  base, base_grad = jax.value_and_grad(loss)(params, config)
  val, grad = jax.value_and_grad(loss)(params, config.replace(scan_unroll=unroll))
  assert abs(float(val) - float(base)) <= 1e-6 * abs(float(base))
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grad, base_grad)
  assert max(jax.tree.leaves(diffs)) <= 1e-6
  assert float(jnp.max(jnp.abs(grad["vision"]["blocks"]["attn"]["q"]))) > 0   # reached


def test_segment_ids_block_attention_between_packed_examples(tiny):
  config, params = tiny
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.integers(10, 500, (1, 5)), jnp.int32)
  b = jnp.asarray(rng.integers(10, 500, (1, 4)), jnp.int32)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.asarray([[1] * 5 + [2] * 4])
  positions = jnp.asarray([list(range(5)) + list(range(4))])
  got = np.asarray(Janus(config).apply({"params": params}, packed, positions=positions,
                                       segment_ids=segments))
  want_a = _full_logits(config, params, a, jnp.ones_like(a))
  want_b = _full_logits(config, params, b, jnp.ones_like(b))
  assert np.max(np.abs(got[:, :5] - want_a)) <= ATOL
  assert np.max(np.abs(got[:, 5:] - want_b)) <= ATOL


@pytest.mark.parametrize("groups,chains", [(1, 0), (2, 0), (1, 1), (2, 2)])
def test_layer_by_layer_decode_equals_scanned_decode(tiny, groups, chains):
  """`llm.decode_layers` (head-grouped caches; plain layer params or each layer cut into
  chains, one per head group) gives the scanned decoder's hidden states for a prefill and
  then single steps."""
  from janus_jax.modules import llm
  config, params = tiny
  model = Janus(config)
  cfg = config.llm
  rng = np.random.default_rng(3)
  b, prompt, steps = 2, 6, 4
  slots = prompt + steps
  ids = jnp.asarray(rng.integers(10, cfg.vocab_size, (b, slots)), jnp.int32)
  mask = np.ones((b, slots), np.int32)
  mask[1, :2] = 0                                   # left padding on row 1
  mask = jnp.asarray(mask)
  positions = default_positions(mask)
  embeds = model.apply({"params": params}, ids, method=Janus.embed)

  def scanned(cache, index, t0, t1):
    return model.apply({"params": params}, embeds[:, t0:t1], positions[:, t0:t1], mask, cache,
                       index, method=Janus.decode)

  layers = llm.split_layers(params["llm"]["layers"], cfg, chains)
  final_norm = params["llm"]["final_norm"]

  def unrolled(caches, index, t0, t1):
    return llm.decode_layers(cfg, layers, final_norm, embeds[:, t0:t1], positions[:, t0:t1],
                             mask, caches, index)

  cache, caches = init_cache(cfg, b, slots), llm.init_layer_caches(cfg, b, slots, groups=groups)
  want, cache = scanned(cache, 0, 0, prompt)
  got, caches = unrolled(caches, 0, 0, prompt)
  assert np.max(np.abs(np.asarray(got) - np.asarray(want))) <= ATOL
  for i in range(prompt, slots):
    want, cache = scanned(cache, jnp.int32(i), i, i + 1)
    got, caches = unrolled(caches, jnp.int32(i), i, i + 1)
    assert np.max(np.abs(np.asarray(got) - np.asarray(want))) <= ATOL
  # The grouped caches hold the scanned cache's keys and values, head group by head group.
  for layer, layer_caches in enumerate(caches):
    k = np.concatenate([np.asarray(kv[0]) for kv in layer_caches], axis=1)
    v = np.concatenate([np.asarray(kv[1]) for kv in layer_caches], axis=1)
    np.testing.assert_allclose(k, np.asarray(cache["k"][layer]), atol=ATOL)
    np.testing.assert_allclose(v, np.asarray(cache["v"][layer]), atol=ATOL)
