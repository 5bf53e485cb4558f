"""convert.components: a Janus checkpoint assembled from a Llama, a SigLIP and a LlamaGen VQ.

Each part is a tiny random transformers model saved the way its real release is (the VQ as
a LlamaGen training pickle with original names); after conversion our model must reproduce
each part's own outputs (float32, <= 1e-4), and the parts no component provides must be
our seeded init.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

import janus_jax
from janus_jax import Janus
from janus_jax.errors import CheckpointError
from janus_jax import model as model_lib
from convert import components
from tests.tiny_tokenizer import write_tokenizer

ATOL = 1e-4
VOCAB, IMAGE = 300, 32
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3, image_token_id=5, boi_token_id=6,
              eoi_token_id=7)   # where tests/tiny_tokenizer.py puts them
SEED = 7


def _randomise(model, seed):
  """Every parameter away from its init (norms included); activations stay O(1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      elif "embed_tokens" in name or "embedding.weight" in name or "probe" in name:
        p.copy_(noise * (1.0 if "quantize" in name else 0.5))
      else:
        p.copy_(noise / np.sqrt(int(np.prod(p.shape[1:]))))
  return model.float().eval()


def _llama():
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=512, rope_theta=5000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
  return _randomise(LlamaForCausalLM(config), 1)


def _siglip(hidden_act="gelu"):
  from transformers import SiglipVisionConfig, SiglipVisionModel
  torch.manual_seed(0)
  config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE, patch_size=8,
                              hidden_act=hidden_act, layer_norm_eps=1e-6)
  return _randomise(SiglipVisionModel(config), 2)


def _vq():
  from transformers import JanusVQVAE, JanusVQVAEConfig
  torch.manual_seed(0)
  config = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, base_channels=32,
                            channel_multiplier=[1, 2], num_res_blocks=1, latent_channels=32,
                            num_patches=IMAGE // 2)
  return _randomise(JanusVQVAE(config), 3)


def llamagen_state_dict(vq_model) -> dict:
  """transformers JanusVQVAE weights under LlamaGen's original names (no prefix), plus the
  `codebook_used` buffer LlamaGen stores."""
  from convert.deepseek import hf_tensors_to_deepseek
  hf = {f"model.vqmodel.{k}": v.numpy() for k, v in vq_model.state_dict().items()}
  sd = {k.removeprefix("gen_vision_model."): torch.from_numpy(np.ascontiguousarray(v))
        for k, v in hf_tensors_to_deepseek(hf).items()}
  sd["quantize.codebook_used"] = torch.zeros(65536)
  return sd


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  root = tmp_path_factory.mktemp("components")
  llama, siglip, vq = _llama(), _siglip(), _vq()
  llm_dir, siglip_dir = str(root / "llm"), str(root / "siglip")
  llama.save_pretrained(llm_dir)
  write_tokenizer(llm_dir, VOCAB)
  siglip.save_pretrained(siglip_dir)
  vq_file = str(root / "vq_ds16.pt")
  torch.save({"model": llamagen_state_dict(vq), "steps": 3,
              "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95)}]}},
             vq_file)
  return dict(root=root, llama=llama, siglip=siglip, vq=vq, llm_dir=llm_dir,
              siglip_dir=siglip_dir, vq_file=vq_file)


@pytest.fixture(scope="module")
def converted(parts):
  dst = str(parts["root"] / "janus")
  summary = components.convert_components(parts["llm_dir"], parts["siglip_dir"],
                                          parts["vq_file"], dst, seed=SEED, dtype="float32",
                                          progress=False, warn=pytest.fail)
  return summary, janus_jax.load(dst, dtype="float32")


def _apply(loaded, *args, method=None):
  return np.asarray(loaded.model.apply({"params": loaded.params}, *args, method=method))


# --- parity with each part ---------------------------------------------------------------------
def test_llm_logits_match_llama_on_a_left_padded_batch(parts, converted):
  _, loaded = converted
  g = torch.Generator().manual_seed(0)
  ids = torch.randint(10, VOCAB, (2, 12), generator=g)
  mask = torch.ones_like(ids)
  mask[1, :3] = 0
  with torch.no_grad():
    want = parts["llama"](input_ids=ids, attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
  got = _apply(loaded, jnp.asarray(ids.numpy()), None, jnp.asarray(mask.numpy()))
  valid = mask.numpy().astype(bool)
  assert 0.3 < np.std(want[valid]) < 20          # O(1) logits: the comparison means something
  assert np.max(np.abs(got - want)[valid]) <= ATOL


def test_vision_features_match_siglip_last_hidden_state(parts, converted):
  _, loaded = converted
  pixels = torch.rand((2, 3, IMAGE, IMAGE), generator=torch.Generator().manual_seed(1)) * 2 - 1
  with torch.no_grad():
    want = parts["siglip"](pixel_values=pixels).last_hidden_state.numpy()   # post_layernorm'd
  got = _apply(loaded, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)),
               method=lambda m, x: m.vision(x))
  assert 0.3 < np.std(want) < 20
  assert np.max(np.abs(got - want)) <= ATOL


def test_vq_decode_matches_the_vq_model(parts, converted):
  _, loaded = converted
  codes = torch.randint(0, 64, (2, (IMAGE // 2) ** 2), generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    want = parts["vq"].decode(codes).numpy().transpose(0, 2, 3, 1)
  got = _apply(loaded, jnp.asarray(codes.numpy()), method=Janus.decode_codes)
  assert 0.1 < np.std(want) < 20
  assert np.max(np.abs(got - want)) <= ATOL


def test_config_is_assembled_from_the_parts(parts, converted):
  summary, loaded = converted
  cfg = loaded.config
  assert (cfg.llm.vocab_size, cfg.llm.hidden_size, cfg.llm.intermediate_size, cfg.llm.num_layers,
          cfg.llm.num_heads, cfg.llm.num_kv_heads, cfg.llm.head_dim) == (VOCAB, 64, 96, 2, 4, 2, 16)
  assert cfg.llm.rope_theta == 5000.0 and cfg.llm.max_position_embeddings == 512
  assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.width, cfg.vision.num_layers,
          cfg.vision.num_heads, cfg.vision.mlp_dim) == (IMAGE, 8, 32, 2, 2, 64)
  assert (cfg.vq.image_size, cfg.vq.codebook_size, cfg.vq.codebook_dim, cfg.vq.base_channels,
          cfg.vq.channel_mult, cfg.vq.num_res_blocks, cfg.vq.z_channels) == (
              IMAGE, 64, 8, 32, (1, 2), 1, 32)
  assert cfg.gen_head_dim == 64
  assert {f: getattr(cfg, f) for f in TOKENS} == TOKENS
  dst = summary["destination"]
  assert os.path.isfile(os.path.join(dst, "tokenizer.json"))
  assert json.load(open(os.path.join(dst, "config.json")))["param_dtype"] == "float32"
  assert not [n for n in os.listdir(parts["root"]) if ".tmp-" in n]


# --- fresh parameters ----------------------------------------------------------------------------
def test_fresh_params_are_our_seeded_init(converted):
  _, loaded = converted
  cfg = loaded.config
  # `init_params`' own init function with only these outputs kept (jit prunes the rest).
  init = model_lib._boxed_init(cfg)
  full = jax.jit(lambda r: {k: nn.unbox(init(r))[k] for k in components.FRESH})(
      jax.random.key(SEED))
  same = components.fresh_params(cfg, SEED)
  other = components.fresh_params(cfg, SEED + 1)
  for name in components.FRESH:
    got = flatten_dict({name: loaded.params[name]})
    for path, want in flatten_dict({name: full[name]}).items():
      np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want), err_msg=str(path))
      np.testing.assert_array_equal(np.asarray(got[path]), flatten_dict(same)[path])
      if path[-1] != "bias":     # biases start at zero whatever the seed
        assert not np.array_equal(np.asarray(got[path]), flatten_dict(other)[path]), path


def test_siglip_map_head_is_dropped(parts, converted):
  summary, loaded = converted
  head = [k for k in parts["siglip"].state_dict() if k.split(".")[0] == "head"
          or ".head." in k]
  assert head and summary["dropped"] == len(head)
  vision = flatten_dict(loaded.params["vision"])
  assert not [p for p in vision if "head" in p[0]]
  assert set(p[0] for p in vision) == {"patch_kernel", "patch_bias", "pos_embed", "blocks",
                                       "final_norm"}


# --- variants of the inputs ---------------------------------------------------------------------
def _copy(src, dst, edit_config=None):
  shutil.copytree(src, dst)
  if edit_config is not None:
    path = os.path.join(dst, "config.json")
    config = json.load(open(path))
    edit_config(config)
    json.dump(config, open(path, "w"))
  return str(dst)


def test_vision_model_prefix_and_full_siglip_model_keys(parts, converted, tmp_path):
  """transformers 4.x saves SiglipVisionModel under `vision_model.*`; a SiglipModel adds a text
  tower and logit scale/bias. Both give the same vision params."""
  from safetensors.numpy import load_file, save_file
  src = parts["siglip_dir"]
  tensors = load_file(os.path.join(src, "model.safetensors"))
  for name, extra in (("prefixed", {}), ("full", {"text_model.embeddings.token_embedding.weight":
                                                  np.zeros((10, 4), np.float32),
                                                  "logit_scale": np.ones(1, np.float32)})):
    d = _copy(src, tmp_path / name)
    save_file({**{f"vision_model.{k}": v for k, v in tensors.items()}, **extra},
              os.path.join(d, "model.safetensors"))
    if name == "full":
      vision = json.load(open(os.path.join(src, "config.json")))
      json.dump({"model_type": "siglip", "vision_config": vision, "text_config": {}},
                open(os.path.join(d, "config.json"), "w"))
    p = components.plan(parts["llm_dir"], d, parts["vq_file"], dtype="float32")
    assert p.dropped == sum(k.startswith("head.") for k in tensors) + len(extra)
    got = {}
    for path, array in components.iter_params(p):
      if path[0] in components.FRESH:     # the fresh ones come last; not needed here
        break
      if path[0] == "vision":
        got[path] = array
    want = flatten_dict({"vision": converted[1].params["vision"]})
    assert set(got) == set(want)
    for path, array in got.items():
      np.testing.assert_array_equal(array, np.asarray(want[path]), err_msg=str(path))


def test_vq_as_prefixed_safetensors(parts, converted, tmp_path):
  """A VQ state dict extracted from a Janus checkpoint keeps `gen_vision_model.*` names."""
  from safetensors.torch import save_file
  vq_file = str(tmp_path / "vq.safetensors")
  save_file({f"gen_vision_model.{k}": v for k, v in llamagen_state_dict(parts["vq"]).items()},
            vq_file)
  p = components.plan(parts["llm_dir"], parts["siglip_dir"], vq_file, dtype="float32")
  want = flatten_dict({"vq": converted[1].params["vq"]})
  got = {}
  for path, array in components.iter_params(p):
    if path[0] in components.FRESH:
      break
    if path[0] == "vq":
      got[path] = array
  assert set(got) == set(want)
  for path, array in got.items():
    np.testing.assert_array_equal(array, np.asarray(want[path]), err_msg=str(path))


def test_other_vision_image_size_resamples_positions_like_transformers(parts):
  size = 48
  config, params = components.load_components(parts["llm_dir"], parts["siglip_dir"],
                                              parts["vq_file"], vision_image_size=size)
  assert config.vision.image_size == size and config.vq.image_size == size
  pixels = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(3)) * 2 - 1
  with torch.no_grad():
    want = parts["siglip"](pixel_values=pixels,
                           interpolate_pos_encoding=True).last_hidden_state.numpy()
  got = np.asarray(Janus(config).apply({"params": params},
                                       jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)),
                                       method=lambda m, x: m.vision(x)))
  assert np.max(np.abs(got - want)) <= ATOL


def test_tied_llama_takes_lm_head_from_the_embedding(parts, tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy(parts["llm_dir"], tmp_path / "tied",
            lambda c: c.update(tie_word_embeddings=True))
  tensors = load_file(os.path.join(d, "model.safetensors"))
  del tensors["lm_head.weight"]
  save_file(tensors, os.path.join(d, "model.safetensors"))
  p = components.plan(d, parts["siglip_dir"], parts["vq_file"], dtype="float32")
  got = dict(components.iter_params(p))
  np.testing.assert_array_equal(got[("llm", "lm_head", "kernel")],
                                tensors["model.embed_tokens.weight"].T)


# --- the command line and bad input -------------------------------------------------------------
def _cli(parts, dst, capsys, **changed):
  args = {**dict(llm=parts["llm_dir"], siglip=parts["siglip_dir"], vq=parts["vq_file"]), **changed}
  argv = [a for k, v in args.items() for a in (f"--{k}", v)] + [str(dst), "--quiet"]
  code = components.main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def test_cli_warns_when_siglip_uses_tanh_gelu(parts, tmp_path, capsys):
  siglip = _copy(parts["siglip_dir"], tmp_path / "siglip_tanh",
                 lambda c: c.update(hidden_act="gelu_pytorch_tanh"))
  code, out, err = _cli(parts, tmp_path / "dst", capsys, siglip=siglip)
  assert code == 0, err
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "gelu_pytorch_tanh" in warnings[0]
  assert out.startswith("wrote") and "seed 0" in out
  assert f"({sum(k.startswith('head.') for k in parts['siglip'].state_dict())} head" in out
  assert json.load(open(tmp_path / "dst" / "config.json"))["param_dtype"] == "bfloat16"


def test_vq_pickle_with_a_malicious_global_is_refused(parts, tmp_path, capsys):
  vq_file = str(tmp_path / "evil.pt")
  torch.save({"model": llamagen_state_dict(parts["vq"]), "hook": os.system}, vq_file)
  code, out, err = _cli(parts, tmp_path / "dst", capsys, vq=vq_file)
  assert code == 1 and not out
  assert len(err.strip().splitlines()) == 1 and "refuses to unpickle" in err
  assert "system" in err and "Traceback" not in err
  assert not os.path.exists(tmp_path / "dst")


def test_tokenizer_without_janus_tokens_is_refused(parts, tmp_path, capsys):
  d = _copy(parts["llm_dir"], tmp_path / "llm_plain")
  path = os.path.join(d, "tokenizer.json")
  text = open(path, encoding="utf-8").read().replace("<image_placeholder>", "<img>")
  open(path, "w", encoding="utf-8").write(text)
  code, _, err = _cli(parts, tmp_path / "dst", capsys, llm=d)
  assert code == 1 and len(err.strip().splitlines()) == 1
  assert "<image_placeholder>" in err and "add_special_tokens" in err
  assert not os.path.exists(tmp_path / "dst")


def test_llm_config_describing_more_layers_names_the_missing_tensor(parts, tmp_path):
  d = _copy(parts["llm_dir"], tmp_path / "llm3", lambda c: c.update(num_hidden_layers=3))
  with pytest.raises(CheckpointError, match=r"'model\.layers\.2\..*' is missing"):
    components.plan(d, parts["siglip_dir"], parts["vq_file"])


def test_existing_dst_is_refused_without_overwrite(parts, converted, capsys):
  code, _, err = _cli(parts, converted[0]["destination"], capsys)
  assert code == 1 and "already exists" in err and "--overwrite" in err
