"""The demo, phase by phase (see janus_jax/demo/__init__.py for the overview).

Every phase writes its output atomically into the workdir and is skipped when a rerun
finds it there (a stage in progress resumes from its last checkpoint), so an interrupted
demo continues where it stopped. Evaluation and the report are always redone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time

import numpy as np

from janus_jax.config import JanusConfig, LLMConfig, VisionConfig, VQConfig
from janus_jax.demo import data as demo_data
from janus_jax.demo import world
from janus_jax.demo.report import read_jsonl


@dataclasses.dataclass(frozen=True)
class Plan:
  """How much of everything a run makes and trains."""
  train_scenes: int
  eval_scenes: int
  vq_scenes: int
  captions_per_image: int
  vq_ae_steps: int
  vq_steps: int
  vq_batch: int
  stage_steps: tuple[int, int, int]   # with `minutes`: Stages II and III at most these
  batch_size: int              # packed rows of 256 tokens per step, every stage
  geneval_per_category: int
  images_per_prompt: int
  vqa_questions: int
  # Sampling for the evaluation: a model this small and briefly trained draws cleaner
  # pictures with mild guidance and a lower temperature than Janus-Pro's w = 5, T = 1.
  cfg_weight: float = 1.5
  temperature: float = 0.4
  seed: int = 0
  # The VQ's learning-rate warm-up (train_vq.VQTrainConfig.warmup_steps; 20 there). With
  # 60, fewer autoencoder steps do: 75 + 250 steps of 32 images read back the same objects
  # in 100 % of held-out pictures, as 150 + 250 did after 20 (the VQ phase 120 s instead of
  # 155 in a full run); 40 + 160 of 16, 31 %, about what 80 + 160 reached after 20 (34 %;
  # 40 + 200: 47 %). README, "A shorter VQ phase". Those are the Zen 4's figures: on a Zen 1
  # the same plan reached 93.8 %, and 71.9 % with seed 1 (README, "On a first-generation
  # EPYC"), so the VQ at this step count is not reliable across hosts and seeds.
  vq_warmup: int = 60
  # > 0: while the detector does not read the same objects in every reconstruction of 256
  # training pictures, the VQ trains on at the final rate, 25 steps at a time, up to this
  # many more (train_vq.train's `until`). At 75 + 250 steps the seed decides the VQ (93.8 /
  # 71.9 / 89.1 % with seeds 0 / 1 / 2 on a Zen 3, README "The VQ across seeds"); 100 more
  # steps at the final rate took seeds 1 and 2 to 95.3 and 98.4 %.
  vq_extra_steps: int = 0
  # > 0: the understanding encoder is first pretrained for this many steps on pictures and
  # their descriptions (`janus_jax.train_vision`, SigLIP's sigmoid loss), then kept frozen
  # in Stages I and II and trained in Stage III, as Janus does with its pretrained SigLIP.
  # 0: it starts random and trains in every stage.
  vision_steps: int = 0
  vision_batch: int = 128
  vision_text_width: int = 64    # the text tower's width (train_vision.VisionTrainConfig)
  # > 0: the whole run's time budget in minutes. Stages II and III then train as many steps
  # (in stage_steps' proportion, at most those) as fit the time left after Stage I, at
  # Stage I's measured step time (`budget_steps`); after Stage II, Stage III's steps are
  # fitted again at Stage II's (`Demo.refit_stage3`): the same minutes on a slow machine as
  # on a fast one, fewer steps. 0: stage_steps as given.
  minutes: float = 0.0


# FULL: 8 rows per step and twice the steps of 16 rows in the same minutes (a step costs
# about half): mini-GenEval 0.618 -> 0.677, VQA 0.902 -> 0.895 (README, "The demo"). The
# encoder pretrains on 256 pairs with a text tower of width 128: at equal Stage steps VQA
# 0.860 with 128 / 64 and 0.877 with 256 / 64, 0.907 with 256 / 128 ("What colour is the
# X?" 0.20 / 0.32 / 0.54); it costs about 85 s more than 128 / 64.
FULL = Plan(train_scenes=12000, eval_scenes=400, vq_scenes=2500, captions_per_image=2,
            vq_ae_steps=75, vq_steps=250, vq_batch=32, stage_steps=(50, 1700, 900),
            batch_size=8, geneval_per_category=12, images_per_prompt=4, vqa_questions=600,
            minutes=14.5, vision_steps=300, vision_batch=256, vision_text_width=128,
            vq_extra_steps=100)
# QUICK: 8 rows per step as in FULL (at 16 rows and 80 / 40 steps it took 16 s more for VQA
# 0.492 against 0.542), and the encoder on 64 pairs for 300 steps (held-out retrieval 0.50
# against 0.39 with 128 pairs for 250 steps, in less time).
QUICK = Plan(train_scenes=2000, eval_scenes=80, vq_scenes=1000, captions_per_image=2,
             vq_ae_steps=40, vq_steps=160, vq_batch=16, stage_steps=(10, 100, 50), batch_size=8,
             geneval_per_category=2, images_per_prompt=2, vqa_questions=120, vision_steps=300,
             vision_batch=64)

# The VQ: LlamaGen's architecture at 48 px with three downsamplings (6 x 6 codes, one 2 x 2
# block per grid cell); GroupNorm over 32 channels as the transformers reference requires.
DEMO_VQ = VQConfig(image_size=world.IMAGE_SIZE, codebook_size=128, codebook_dim=8,
                   base_channels=32, channel_mult=(1, 1, 1, 2), num_res_blocks=0,
                   z_channels=64)


# Stages II and III cost this much more per step than Stage I, their checkpoints and
# exports included (measured in budgeted full runs: on a 2-core Zen 3 medians 0.690 and
# 0.697 s against 0.564 s; on a 2-core Zen 4 medians 0.329 and 0.340 s against 0.266 s but
# wall time per step 0.348 and 0.366 s, and 1.25 let that run end 18 s past its budget),
# and evaluation plus the report about this many Stage I steps (55 s on the Zen 3).
LATER_STAGE_COST = 1.3
EVALUATION_STEPS = 100
# A Stage III step costs this much more than a Stage II one (its ratios hold more pictures
# for the understanding encoder, trainable from Stage III: medians 0.340 against 0.329 s on
# the Zen 4).
STAGE3_COST = 1.05
MIN_SCALE = 0.05


def budget_steps(plan: Plan, elapsed: float, stage1_seconds: float,
                 stage1_step: float) -> tuple[int, int, int]:
  """Stage steps that fit `plan.minutes` when Stage I ended `elapsed` s into the run.

  stage1_seconds: Stage I's wall time; stage1_step: its median step time. What a stage
  costs besides its steps (compiling, export) is taken to be Stage I's, twice more; Stages
  II and III keep stage_steps' proportion, scaled down to fit (never up, never below
  MIN_SCALE of it).
  """
  s1, s2, s3 = plan.stage_steps
  overhead = max(0.0, stage1_seconds - s1 * stage1_step)
  left = (plan.minutes * 60 - elapsed - 2 * overhead - EVALUATION_STEPS * stage1_step)
  scale = left / (LATER_STAGE_COST * stage1_step * (s2 + s3))
  scale = min(1.0, max(MIN_SCALE, scale))
  return s1, max(1, round(s2 * scale)), max(1, round(s3 * scale))


def model_config(ids: dict) -> JanusConfig:
  """The demo's Janus: a 4-layer LLM of width 192, a 2-layer SigLIP on 16-px patches (one
  per grid cell; 8-px patches made VQA worse in a full run), DEMO_VQ; special-token ids
  from the trained tokenizer."""
  return JanusConfig(
      llm=LLMConfig(vocab_size=ids["vocab_size"], hidden_size=192, intermediate_size=512,
                    num_layers=4, num_heads=3, num_kv_heads=3, head_dim=64,
                    max_position_embeddings=512),
      vision=VisionConfig(image_size=world.IMAGE_SIZE, patch_size=world.CELL, width=128,
                          num_layers=2, num_heads=4, mlp_dim=512),
      vq=DEMO_VQ, gen_head_dim=192,
      **{k: v for k, v in ids.items() if k != "vocab_size"})


def plan_of(workdir: str) -> Plan:
  """The plan a workdir was made with (its plan.json)."""
  path = os.path.join(workdir, "plan.json")
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} holds no demo run ({path} is missing); run "
                     "`python -m janus_jax.demo --workdir DIR` there first.")
  return Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in _read_json(path).items()})


class Demo:
  """One run in `workdir`; `run()` does every phase."""

  def __init__(self, workdir: str, plan: Plan, *, progress: bool = True, log=print):
    self.workdir, self.plan, self.progress, self.log = os.path.abspath(workdir), plan, progress, log
    self.phases: list[dict] = []
    self._vq_cache = None
    os.makedirs(self.workdir, exist_ok=True)
    self._check_plan()
    self.data_dir = self.path("data")
    self.tokenizer_dir = self.path("data", "tokenizer")

  def _check_plan(self) -> None:
    """Finished phases are reused, so a workdir holds one plan: refuse another one."""
    path = self.path("plan.json")
    plan = dataclasses.asdict(self.plan)
    if os.path.isfile(path):
      stored = _read_json(path)
      if stored != json.loads(json.dumps(plan)):
        raise ValueError(f"{self.workdir} holds a run with other settings ({path}); rerun with "
                         "the same ones (e.g. add or drop --quick) or choose another --workdir.")
    else:
      _write_json(path, plan)

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def _phase(self, name: str, start: float, **extra) -> None:
    entry = dict(name=name, seconds=time.perf_counter() - start, **extra)
    self.phases.append(entry)
    detail = f" ({entry['detail']})" if entry.get("detail") else ""
    self.log(f"[{name}] done in {entry['seconds']:.1f} s{detail}")

  # --- phase 1: data and tokenizer -----------------------------------------------------------
  def make_data(self) -> JanusConfig:
    start = time.perf_counter()
    marker = os.path.join(self.data_dir, "counts.json")
    if not os.path.isfile(marker):
      p = self.plan
      counts = demo_data.make_dataset(
          self.data_dir, train_scenes=p.train_scenes, eval_scenes=p.eval_scenes,
          vq_scenes=p.vq_scenes, captions_per_image=p.captions_per_image, geneval_per_category=p.geneval_per_category,
          seed=p.seed, progress=self.progress)
      counts["token_ids"] = demo_data.train_tokenizer(self.data_dir, self.tokenizer_dir)
      _write_json(marker, counts)
    counts = _read_json(marker)
    self._phase("data + tokenizer", start,
                detail=f"{counts['train_images']} training pictures (+{counts['vq_images']} "
                       f"for the VQ), {counts['t2i']} captions, "
                       f"{counts['understanding']} conversations, {counts['text']} texts; "
                       f"held out: {counts['eval_images']} pictures, {counts['eval_vqa']} "
                       f"questions, {counts['geneval']} prompts; vocabulary "
                       f"{counts['token_ids']['vocab_size']}")
    return model_config(counts["token_ids"])

  # --- phase 2: the VQ tokenizer -----------------------------------------------------------
  def train_vq(self, config: JanusConfig) -> str:
    from janus_jax import checkpoint as checkpoint_lib
    from janus_jax import train_vq
    start = time.perf_counter()
    out = self.path("vq")
    paths = train_vq.image_paths(os.path.join(self.data_dir, "images", "vq"))
    if not checkpoint_lib.is_converted(out):
      images = train_vq.load_images(paths, config.vq.image_size)
      tc = train_vq.VQTrainConfig(steps=self.plan.vq_steps, ae_steps=self.plan.vq_ae_steps,
                                  batch_size=self.plan.vq_batch, warmup_steps=self.plan.vq_warmup,
                                  seed=self.plan.seed)
      # The stopping check reads training pictures (the reported one, held-out pictures):
      # 256 of them, since with 64 a VQ that misreads 6 % of held-out pictures (seed 0 on a
      # Zen 3: 100 % of 64 training pictures, 96.5 % of 256) passes unnoticed.
      until = None
      if self.plan.vq_extra_steps:
        check = train_vq.load_images(train_vq.image_paths(
            os.path.join(self.data_dir, "images", "train"))[:256], config.vq.image_size)
        until = lambda vq: _vq_agreement(vq, config, check)[0] == 1.0  # noqa: E731
      params, history = train_vq.train(images, config, tc, progress=self.progress, until=until,
                                       extra_steps=self.plan.vq_extra_steps)
      train_vq.save(out, params, config, history=history)
    self.vq_check = self._check_vq(out, config)
    self._phase("VQ tokenizer", start, steps=self.vq_check["steps"], detail=self.vq_check["detail"])
    return out

  def _vq_params(self, vq_dir: str) -> dict:
    """The trained VQ's params, read once per run."""
    if self._vq_cache is None:
      from janus_jax.data.vq_codes import load_vq_params
      self._vq_cache = load_vq_params(vq_dir)[1]
    return self._vq_cache

  def _check_vq(self, vq_dir: str, config: JanusConfig) -> dict:
    """Reconstructions of held-out pictures: does the detector read the same scene?"""
    from janus_jax import train_vq
    from janus_jax.demo import report
    params = self._vq_params(vq_dir)
    paths = train_vq.image_paths(os.path.join(self.data_dir, "images", "eval"))[:64]
    images = train_vq.load_images(paths, config.vq.image_size)
    same, codes, originals, recon = _vq_agreement(params["vq"], config, images)
    os.makedirs(self.path("report"), exist_ok=True)
    report.save_pairs(originals, recon, self.path("report", "vq_reconstructions.png"))
    metrics = read_jsonl(os.path.join(vq_dir, "metrics.jsonl"))
    last = metrics[-1] if metrics else {}
    detail = (f"{last.get('step', '?')} steps; the detector reads the same objects in "
              f"{same:.1%} of {len(images)} held-out reconstructions; {len(np.unique(codes))} "
              f"of {config.vq.codebook_size} codes used; reconstruction MSE "
              f"{last.get('recon', float('nan')):.4f}")
    return dict(agreement=float(same), detail=detail, steps=last.get("step"))

  # --- phase 2b: the understanding encoder ----------------------------------------------------
  def train_vision(self, config: JanusConfig) -> str | None:
    """Pretrains the understanding encoder on the training pictures and their
    descriptions (Plan.vision_steps); None when the plan has it start random."""
    from janus_jax import checkpoint as checkpoint_lib
    from janus_jax import train_vision
    if not self.plan.vision_steps:
      return None
    start = time.perf_counter()
    out = self.path("vision")
    if not checkpoint_lib.is_converted(out):
      from tokenizers import Tokenizer
      paths, captions = train_vision.read_pairs(os.path.join(self.data_dir, "vision.jsonl"))
      tc = train_vision.VisionTrainConfig(steps=self.plan.vision_steps,
                                          batch_size=self.plan.vision_batch,
                                          text_width=self.plan.vision_text_width,
                                          seed=self.plan.seed)
      tokenizer = Tokenizer.from_file(os.path.join(self.tokenizer_dir, "tokenizer.json"))
      ids, mask = train_vision.tokenize(tokenizer, captions, tc.max_text_tokens)
      images = train_vision.load_images(paths, config.vision.image_size)
      params, history = train_vision.train(images, ids, mask, config, tc,
                                           progress=self.progress)
      train_vision.save(out, params, config, history=history)
    last = read_jsonl(os.path.join(out, "metrics.jsonl"))[-1]
    self._phase("understanding encoder", start, steps=self.plan.vision_steps,
                detail=f"sigmoid loss {last['loss']:.3f}; a held-out picture's best-matching "
                       f"description is its own in {last.get('retrieval', float('nan')):.1%}")
    return out

  # --- phase 3: prepared data sets -----------------------------------------------------------
  def sources(self) -> dict:
    """The prepared data sets, {kind: [directory]}, as the train config reads them."""
    return {kind: [self.path("prepared", kind)] for kind in ("t2i", "understanding", "text")}

  def prepare(self, vq_dir: str) -> dict:
    from janus_jax.data import prepare
    from janus_jax.data.sources import PREPARE_FILE
    start = time.perf_counter()
    sources = self.sources()
    for kind, (out,) in sources.items():
      if os.path.isfile(os.path.join(out, PREPARE_FILE)):   # finished in an earlier run
        continue
      summary = prepare.prepare(
          kind, os.path.join(self.data_dir, f"{kind}.jsonl"), out,
          vq_checkpoint=vq_dir if kind == "t2i" else None,
          image_size=world.IMAGE_SIZE if kind == "understanding" else None,
          batch_size=256, shard_size=5000, progress=self.progress)
      if summary is not None and sum(summary["skipped"].values()):
        raise RuntimeError(f"prepare skipped demo examples: {summary['skipped']}")
    self._phase("prepare (TFDS / ArrayRecord)", start)
    return sources

  # --- phase 4: the init checkpoint ------------------------------------------------------------
  def init_checkpoint(self, config: JanusConfig, vq_dir: str, vision_dir: str | None = None) -> str:
    """Random LLM, aligners and heads + the trained VQ + the pretrained understanding
    encoder (random without `vision_dir`) + the tokenizer files."""
    from janus_jax import checkpoint as checkpoint_lib
    from janus_jax.model import init_params
    out = self.path("init")
    if not checkpoint_lib.is_converted(out):
      import jax
      trained = ("vq", "vision") if vision_dir is not None else ("vq",)
      params = jax.device_get(init_params(config, jax.random.PRNGKey(self.plan.seed),
                                          exclude=trained))
      params["vq"] = self._vq_params(vq_dir)["vq"]
      if vision_dir is not None:
        params["vision"] = checkpoint_lib.load_part(vision_dir, "vision")[1]["vision"]
      checkpoint_lib.save(out, params, config, source_dir=self.tokenizer_dir)
    return out

  # --- phase 5: Stages I -> III ------------------------------------------------------------------
  def stage_config(self, stage: int, init_dir: str, sources: dict):
    """The train config of Stage `stage`: the recipe's demo variant with this plan's steps,
    rows per step and seed, starting from `init_dir`, reading `sources` (`prepare`)."""
    from janus_jax.train import recipe
    config = recipe.stage_config(stage, "demo")
    config.init.path = init_dir
    config.data.sources = sources
    config.data.tokenizer_dir = self.tokenizer_dir
    config.num_steps = self.stage_steps()[stage - 1]
    config.global_batch_size = self.plan.batch_size
    if config.num_steps > config.optimizer.warmup_steps:   # anneal: see recipe.DEMO_LR
      config.optimizer.decay_steps = config.num_steps
    config.seed = self.plan.seed + stage
    if self.plan.vision_steps and stage < 3:      # a pretrained encoder: frozen until III
      config.trainable = tuple(t for t in config.trainable if t != "vision/.*")
    return config

  def stage_steps(self) -> tuple[int, int, int]:
    """The steps of Stages I-III: the plan's, or under a budget those `fit_budget` fixed."""
    path = self.path("steps.json")
    if self.plan.minutes and os.path.isfile(path):
      return tuple(_read_json(path)["stage_steps"])
    return self.plan.stage_steps

  def _median_step_time(self, stage: int) -> float:
    """The median of the step times Stage `stage` logged (its metrics.jsonl)."""
    return float(np.median([r["step_time"] for r in
                            read_jsonl(self.path(f"stage{stage}", "metrics.jsonl"))
                            if "step_time" in r]))

  def fit_budget(self, run_start: float) -> None:
    """After Stage I, under a budget: fixes the steps of Stages II and III (steps.json;
    a rerun keeps them) from the time left and Stage I's step time."""
    path = self.path("steps.json")
    if not self.plan.minutes or os.path.isfile(path):
      return
    stage1 = next(p for p in self.phases if p["name"] == "Stage I")
    step = self._median_step_time(1)
    elapsed = time.perf_counter() - run_start
    steps = budget_steps(self.plan, elapsed, stage1["seconds"], step)
    _write_json(path, dict(stage_steps=list(steps), minutes=self.plan.minutes,
                           stage1_step_s=step, elapsed_after_stage1_s=elapsed))
    self.log(f"[budget] Stages II / III: {steps[1]} / {steps[2]} steps (at most "
             f"{self.plan.stage_steps[1]} / {self.plan.stage_steps[2]}) fit "
             f"{self.plan.minutes:g} minutes at Stage I's {step:.2f} s per step")

  def refit_stage3(self, run_start: float) -> None:
    """After Stage II, under a budget: Stage III's steps again, from the time actually left
    and Stage II's measured step time and overhead (compiling, checkpoints, export), at most
    the plan's. Stage I's short run misjudges the later stages' step by several per cent
    either way, which over ~1,500 steps is most of the budget's slack; by Stage III only
    its own steps are left to guess. Skipped when Stage II did not train most of its
    steps in this process (a resumed run: its wall time says nothing) or when steps.json
    already holds the refit (a rerun keeps it)."""
    path = self.path("steps.json")
    if not self.plan.minutes or not os.path.isfile(path):
      return
    fixed = _read_json(path)
    stage2 = next((p for p in self.phases if p["name"] == "Stage II"), None)
    if "stage3_before_refit" in fixed or stage2 is None or \
        stage2.get("steps_run", 0) < stage2["steps"] / 2:
      return
    step = self._median_step_time(2) * STAGE3_COST
    overhead = max(0.0, stage2["seconds"] - stage2["steps_run"] * step / STAGE3_COST)
    elapsed = time.perf_counter() - run_start
    left = (self.plan.minutes * 60 - elapsed - overhead
            - EVALUATION_STEPS * fixed["stage1_step_s"])
    before = fixed["stage_steps"][2]
    steps3 = int(min(self.plan.stage_steps[2], max(1, left // step)))
    fixed.update(stage3_before_refit=before, elapsed_after_stage2_s=elapsed,
                 stage2_step_s=step / STAGE3_COST)
    fixed["stage_steps"][2] = steps3
    _write_json(path, fixed)
    self.log(f"[budget] Stage III: {steps3} steps (fixed after Stage I: {before}) fit the "
             f"{left / 60:.1f} minutes left at Stage II's {step / STAGE3_COST:.2f} s per step")

  def train_stage(self, stage: int, init_dir: str, sources: dict) -> str:
    from tqdm import tqdm
    from janus_jax.train import loop
    start = time.perf_counter()
    workdir = self.path(f"stage{stage}")
    export = os.path.join(workdir, "export")
    config = self.stage_config(stage, init_dir, sources)
    name = f"Stage {'I' * stage}"
    steps_seen = []
    if not os.path.isfile(os.path.join(export, "config.json")):
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "train.log"), "a") as log_file, \
          tqdm(total=config.num_steps, desc=name, unit="step", disable=not self.progress) as bar:
        def log(line):
          log_file.write(line + "\n")
          log_file.flush()
        def on_step(step):
          bar.n = step
          bar.refresh()
          steps_seen.append(step)
        loop.train(config, workdir, log=log, on_step=on_step)
    last = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    last = last[-1] if last else {}
    losses = ", ".join(f"{kind} {last[f'loss/{kind}']:.3f}" for kind in
                       ("understanding", "text", "t2i")
                       if np.isfinite(last.get(f"loss/{kind}", float("nan"))))
    steps_run = steps_seen[-1] - steps_seen[0] + 1 if steps_seen else 0
    self._phase(name, start, steps=config.num_steps, steps_run=steps_run,
                detail=f"losses {losses}")
    return export

  # --- phase 6: evaluation ---------------------------------------------------------------------
  def evaluate(self, checkpoint: str, name: str) -> dict:
    import janus_jax
    from janus_jax import generate
    from janus_jax.demo import evaluate
    start = time.perf_counter()
    p = self.plan
    out = self.path("eval", name, "geneval")
    args = ["--checkpoint", checkpoint, "--dtype", "float32",
            "--prompts-file", os.path.join(self.data_dir, "evaluation_metadata.jsonl"),
            "--out", out, "--num-images", str(p.images_per_prompt),
            "--cfg-weight", str(p.cfg_weight), "--temperature", str(p.temperature),
            "--seed", str(p.seed), "--batch-size", "64"]
    if not self.progress:
      args.append("--quiet")
    if generate.main(args) != 0:
      raise RuntimeError(f"python -m janus_jax.generate {' '.join(args)} failed")
    geneval = evaluate.score_geneval(out)
    loaded = janus_jax.load(checkpoint, dtype="float32")
    vqa = evaluate.score_vqa(loaded, evaluate.read_vqa(self.data_dir, p.vqa_questions),
                             progress=self.progress)
    _write_json(self.path("eval", name, "scores.json"), dict(geneval=geneval, vqa=vqa))
    self._phase(f"evaluate ({name})", start,
                detail=f"mini-GenEval {geneval['overall']:.3f}, VQA {vqa['accuracy']:.3f}")
    return dict(geneval=geneval, vqa=vqa, geneval_dir=out)

  def detector_on_ground_truth(self, renders_per_prompt: int = 4) -> float:
    from janus_jax.demo import detector
    rng = random.Random(self.plan.seed)
    entries = world.geneval_prompts(self.plan.geneval_per_category, self.plan.seed + 1)
    hits = [detector.score(e, detector.detect(world.render(world.scene_for_prompt(e, rng))))
            for e in entries for _ in range(renders_per_prompt)]
    return float(np.mean(hits))

  # --- everything --------------------------------------------------------------------------------
  def run(self) -> dict:
    from janus_jax.demo import report
    t0 = time.perf_counter()
    config = self.make_data()
    vq_dir = self.train_vq(config)
    vision_dir = self.train_vision(config)
    sources = self.prepare(vq_dir)
    init_dir = self.init_checkpoint(config, vq_dir, vision_dir)
    checkpoint = init_dir
    for stage in (1, 2, 3):
      checkpoint = self.train_stage(stage, checkpoint, sources)
      if stage == 1:
        self.fit_budget(t0)
      if stage == 2:
        self.refit_stage3(t0)
    trained = self.evaluate(checkpoint, "trained")
    untrained = self.evaluate(init_dir, "untrained")
    gt = self.detector_on_ground_truth()
    total = time.perf_counter() - t0
    image = os.path.join(self.data_dir, "images", "eval",
                         sorted(os.listdir(os.path.join(self.data_dir, "images", "eval")))[0])
    usage = (f"python -m janus_jax.generate --checkpoint {checkpoint} --prompt "
             f"\"a red circle left of a blue square\" --num-images 4 --out samples/\n"
             f"python -m janus_jax.chat --checkpoint {checkpoint} --image {image} "
             f"--question \"How many shapes are there?\"")
    summary = dict(
        workdir=self.workdir, checkpoint=checkpoint, seconds=total, plan=dataclasses.asdict(self.plan),
        stage_steps=list(self.stage_steps()),
        headline=(f"mini-GenEval {trained['geneval']['overall']:.3f} (untrained "
                  f"{untrained['geneval']['overall']:.3f}), VQA accuracy "
                  f"{trained['vqa']['accuracy']:.3f} (untrained "
                  f"{untrained['vqa']['accuracy']:.3f}); {total / 60:.1f} minutes in all"),
        results={"trained": trained, "untrained": untrained}, phases=self.phases,
        images_per_prompt=self.plan.images_per_prompt, cfg_weight=self.plan.cfg_weight,
        detector_on_ground_truth=gt, vq_detail=self.vq_check["detail"],
        vq_agreement=self.vq_check["agreement"], geneval_dir=trained["geneval_dir"], usage=usage)
    summary["report"] = report.write_report(self.workdir, summary)
    _write_json(self.path("summary.json"), {k: v for k, v in summary.items() if k != "results"}
                | {"scores": {name: dict(geneval=r["geneval"]["categories"],
                                         geneval_overall=r["geneval"]["overall"],
                                         vqa=r["vqa"]["accuracy"],
                                         vqa_by_question=r["vqa"]["by_question"])
                              for name, r in summary["results"].items()}})
    return summary


def _vq_agreement(vq_params, config: JanusConfig, images: np.ndarray):
  """(the fraction of `images` whose reconstruction the detector reads as the same objects,
  codes, uint8 originals, uint8 reconstructions)."""
  from janus_jax import train_vq
  from janus_jax.demo import detector
  codes, recon = train_vq.reconstruct(vq_params, config, images)
  originals = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
  same = [_scene_of(detector.detect(a)) == _scene_of(detector.detect(b))
          for a, b in zip(originals, recon)]
  return float(np.mean(same)), codes, originals, recon


def _scene_of(detections) -> list:
  return sorted((d.shape, d.colour, int(d.x // world.CELL), int(d.y // world.CELL))
                for d in detections)


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path: str, data) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, default=str)
    f.write("\n")
  os.replace(tmp, path)
