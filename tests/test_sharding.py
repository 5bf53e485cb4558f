"""Parameters placed by the logical-axis rules on a 2 x 2 x 2 mesh of simulated CPU devices,
and the sharded forward pass equal to the single-device one."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import janus_jax
from janus_jax import Janus, JanusConfig, sharding

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason="needs 8 devices (tests/conftest.py sets XLA_FLAGS)")


@pytest.fixture(scope="module")
def setup():
  config = JanusConfig.preset("tiny")
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  params = janus_jax.init_params(config, jax.random.key(0), mesh=mesh)
  return config, mesh, params


def test_init_params_can_leave_parts_out(setup):
  """exclude: the other parts hold a full init's values and placement; a wrong name is
  refused with the names there are."""
  config, mesh, params = setup
  kept = janus_jax.init_params(config, jax.random.key(0), mesh=mesh, exclude=("vq", "vision"))
  assert set(kept) == set(params) - {"vq", "vision"}
  for got, want in zip(jax.tree.leaves(kept), jax.tree.leaves({k: params[k] for k in kept})):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.sharding == want.sharding
  with pytest.raises(ValueError, match=r"no part named \['vqq'\].*'vq'"):
    janus_jax.init_params(config, jax.random.key(0), exclude=("vqq",))


def test_params_are_placed_as_the_rules_say(setup):
  _, mesh, params = setup
  expect = {
      ("llm", "embed", "embedding"): P("tensor", "fsdp"),                   # vocab, embed
      ("llm", "layers", "attn", "q"): P(None, "fsdp", "tensor", None),     # layers, embed, heads, hd
      ("llm", "layers", "attn", "o"): P(None, "tensor", None, "fsdp"),
      ("llm", "layers", "mlp", "down", "kernel"): P(None, "tensor", "fsdp"),
      ("llm", "lm_head", "kernel"): P("fsdp", "tensor"),
      ("vision", "blocks", "fc1", "kernel"): P(None, "fsdp", "tensor"),
      # (mlp, vocab): 'tensor' goes to the rule listed first, "vocab"; a mesh axis is used once.
      ("gen_head", "fc2", "kernel"): P(None, "tensor"),
  }
  for path, spec in expect.items():
    leaf = params
    for part in path:
      leaf = leaf[part]
    assert leaf.sharding.mesh.shape == mesh.shape
    assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
    assert leaf.addressable_shards[0].data.size * np.prod(
        [mesh.shape[a] for a in jax.tree.leaves(list(spec)) if a]) == leaf.size
  # The VQ tokenizer is replicated.
  conv = params["vq"]["encoder"]["conv_in"]["kernel"]
  assert conv.sharding.is_fully_replicated


def test_sharded_forward_equals_single_device(setup):
  config, mesh, params = setup
  rng = np.random.default_rng(0)
  b, p = 4, config.num_image_tokens
  ids = rng.integers(10, config.llm.vocab_size, (b, p + 6)).astype(np.int32)
  ids[:, 2:2 + p] = config.image_token_id
  mask = np.ones_like(ids)
  mask[1, :2] = 0
  pixels = rng.uniform(-1, 1, (b, 1, 32, 32, 3)).astype(np.float32)

  def forward(params, ids, pixels, mask):
    return Janus(config).apply({"params": params}, ids, pixels, mask)

  single = jax.device_get(params)
  want = np.asarray(jax.jit(forward)(single, ids, pixels, mask))
  with sharding.use_mesh(mesh):
    batch = [jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in (ids, pixels, mask)]
    logits = jax.jit(forward)(params, *batch)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5, rtol=1e-5)
