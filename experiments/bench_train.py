"""Train-step throughput of janus-jax beside a PyTorch reference step, same config, same batch.

  python experiments/bench_train.py [--configs tiny,mid] [--repeats 5] [--steps 2]

For each config: a random transformers `JanusForConditionalGeneration` is built, its
weights are loaded into janus-jax (so both sides start from the same numbers), and the
same synthetic batch (understanding, text and text-to-image rows, batch.py format, one
example per row) goes through
  - janus-jax: the compiled train step (Stage III: everything but the VQ trains);
  - PyTorch: transformers' modules — embeddings with image features and generation
    embeddings merged, the LLM, lm_head and generation head, the same per-position CE —
    then backward, gradient clipping and torch.optim.AdamW over the same parameters.
Both in float32 on the CPU (torch with all cores, subnormals flushed to zero as XLA
does). A repeat times `--steps` consecutive
steps; the table gives medians over repeats, alternating the two sides. MFU = analytic
model FLOPs per step (janus_jax.train.metrics.train_flops) / step time / the measured
float32 matmul peak of this host. The first-step losses of both sides are printed: they
agree when both compute the same thing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests import reference as ref  # noqa: E402

# Sizes: "tiny" is the tiny preset's; "mid" is a ~150M-parameter model (the CPU_PERF
# note's mid-size LLM with a 16384-code generation head and a small SigLIP).
CONFIGS = {
    "tiny": dict(variant=ref.Variant("tiny", vocab=512, hidden=64, intermediate=128, layers=2,
                                     heads=4, kv_heads=2, head_dim=16, vision_image=32,
                                     vision_patch=8, vision_width=64, vision_layers=2,
                                     vision_heads=4, vq_codebook=256),
                 batch=8, seq_len=64,
                 data=dict(caption_len=4, question_len=4, answer_len=4, text_len=12,
                           image_tokens=16)),
    "mid": dict(variant=ref.Variant("mid", vocab=32000, hidden=1024, intermediate=2816, layers=8,
                                    heads=16, kv_heads=16, head_dim=64, vision_image=128,
                                    vision_patch=16, vision_width=512, vision_layers=4,
                                    vision_heads=8, vq_codebook=16384),
                batch=4, seq_len=256,
                data=dict(caption_len=16, question_len=16, answer_len=32, text_len=200,
                          image_tokens=200)),
}


def build(name: str):
  """(torch model, JanusConfig, janus-jax params with the same weights, batch)."""
  from convert.hf import config_from_hf, load_hf
  from janus_jax.train import synthetic
  spec = CONFIGS[name]
  model = ref.build_hf_model(spec["variant"]).train()
  with tempfile.TemporaryDirectory() as tmp:
    directory = ref.save_hf_model(model, tmp)
    config = config_from_hf(model.config.to_dict(), ref.TOKENS)
    _, params = load_hf(directory, config)
  data_cfg = synthetic.default_config()
  data_cfg.update(seq_len=spec["seq_len"], packing=False, num_examples=4, **spec["data"])
  data_cfg.ratios = dict(understanding=1, text=1, t2i=1)
  from janus_jax import sharding
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  batch = next(synthetic.build_train_iterator(data_cfg, model_config=config,
                                              global_batch_size=spec["batch"], mesh=mesh, seed=0))
  return model, config, params, batch, mesh


# --- janus-jax ------------------------------------------------------------------------------------
def jax_side(config, params, batch, mesh):
  from janus_jax.train import partition, recipe
  from janus_jax.train.optimizer import make_optimizer
  from janus_jax.train.step import (abstract_batch_of, compile_train_step,
                                    init_optimizer_state, make_train_step, state_layout)
  c = recipe.base_config("tiny")
  opt_cfg = c.optimizer
  opt_cfg.learning_rate = 1e-4
  optimizer, schedule = make_optimizer(opt_cfg)
  layout = state_layout(config, optimizer, partition.STAGE_III, mesh)
  shardings = jax.tree.map(lambda s: s.sharding, {**layout.state["params"], **layout.frozen})
  params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s),
                        partition.merge(*partition.split(params, layout.mask)), shardings)
  trainable, frozen = partition.split(params, layout.mask)
  state = init_optimizer_state(optimizer, layout, trainable, 0)
  start = time.perf_counter()
  compiled = compile_train_step(make_train_step(config, optimizer, schedule), layout,
                                abstract_batch_of(batch, mesh), mesh)
  compile_seconds = time.perf_counter() - start
  box = {"state": state}

  def step():
    box["state"], metrics = compiled(box["state"], frozen, batch)
    return metrics

  first = float(step()["loss"])
  return step, lambda m: jax.block_until_ready(m), first, compile_seconds, layout.mask


# --- PyTorch ----------------------------------------------------------------------------------------
def torch_side(model, batch, image_token_id: int):
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(os.cpu_count())
  # Adam's second moments of tiny gradients are subnormal floats, which x86 handles ~100x
  # slower unless flushed to zero; XLA:CPU flushes them, so torch must too to be fair.
  torch.set_flush_denormal(True)
  b = {k: torch.from_numpy(np.array(v)) for k, v in jax.device_get(batch).items()}
  ids, targets = b["input_ids"].long(), b["targets"].long()
  pixels = b["pixel_values"].flatten(0, 1).permute(0, 3, 1, 2).contiguous()
  has_image = (ids == image_token_id).any(dim=1)
  attention_mask = (b["segment_ids"] > 0).long()
  is_image_head = b["target_head"] == 1
  janus = model.model
  for p in janus.vqmodel.parameters():
    p.requires_grad_(False)
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=0.0)

  def step():
    embeds = janus.get_input_embeddings()(ids)
    # Image features for every row's image slot (as the JAX step computes them), merged
    # where the row has placeholders.
    features = janus.get_image_features(pixels, return_dict=True).pooler_output
    features = features.reshape(ids.shape[0], -1, embeds.shape[-1])[has_image]
    mask = (ids == image_token_id)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(mask, features.reshape(-1, embeds.shape[-1]))
    gen = janus.generation_aligner(janus.generation_embeddings(b["gen_codes"].long()))
    embeds = torch.where(b["is_gen"][..., None], gen, embeds)
    hidden = janus.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                  position_ids=b["positions"].long()).last_hidden_state
    text_logits = model.lm_head(hidden).float()
    image_logits = janus.generation_head(hidden).float()
    text_ce = F.cross_entropy(text_logits.flatten(0, 1),
                              targets.clamp(0, text_logits.shape[-1] - 1).flatten(),
                              reduction="none")
    image_ce = F.cross_entropy(image_logits.flatten(0, 1),
                               targets.clamp(0, image_logits.shape[-1] - 1).flatten(),
                               reduction="none")
    ce = torch.where(is_image_head.flatten(), image_ce, text_ce)
    weights = b["loss_weights"].flatten()
    loss = (weights * ce).sum() / weights.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    return loss.detach()

  first = float(step())
  return step, lambda m: None, first


# --- measurement ----------------------------------------------------------------------------------
def timed(step, sync, steps: int) -> float:
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = step()
  sync(out)
  return (time.perf_counter() - start) / steps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="tiny,mid")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
  args = parser.parse_args(argv)
  from janus_jax.train import metrics
  peak = metrics.measure_cpu_peak("float32")
  print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s; {os.cpu_count()} cores")
  rows = []
  for name in args.configs.split(","):
    model, config, params, batch, mesh = build(name)
    bsz, seq = batch["input_ids"].shape
    jax_step, jax_sync, jax_loss, compile_s, mask = jax_side(config, params, batch, mesh)
    torch_step, torch_sync, torch_loss = torch_side(model, batch, config.image_token_id)
    flops = metrics.train_flops(config, mask, bsz, seq, batch["pixel_values"].shape[1])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params / 1e6:.1f}M params, batch {bsz} x {seq}, "
          f"{flops / 1e9:.2f} GFLOP/step; first-step loss jax {jax_loss:.5f} torch "
          f"{torch_loss:.5f}; jax compile {compile_s:.1f} s")
    times = {"jax": [], "torch": []}
    for _ in range(args.repeats):
      times["jax"].append(timed(jax_step, jax_sync, args.steps))
      times["torch"].append(timed(torch_step, torch_sync, args.steps))
    for side in ("jax", "torch"):
      t = statistics.median(times[side])
      rows.append((name, side, t, bsz * seq / t, flops / t / peak))
    del model
  print("\n| config | implementation | step time (s) | tokens/s | MFU | speed-up |")
  print("|---|---|---|---|---|---|")
  for name in dict.fromkeys(r[0] for r in rows):
    torch_tps = next(r[3] for r in rows if r[0] == name and r[1] == "torch")
    for _, side, t, tps, mfu in (r for r in rows if r[0] == name):
      label = "janus-jax (XLA)" if side == "jax" else "PyTorch transformers"
      print(f"| {name} | {label} | {t:.4f} | {tps:,.0f} | {100 * mfu:.1f}% | "
            f"{tps / torch_tps:.2f}x |")


if __name__ == "__main__":
  main()
