"""The demo's report: <workdir>/report/index.html with its PNGs beside it.

Sections: the scores (trained model against the same model before training), the loss
curves of the VQ and of each stage per data kind, the VQ's reconstructions, a grid of
generated images for every held-out prompt, and chat examples with their pictures.
"""
from __future__ import annotations

import html
import json
import os

import numpy as np
from PIL import Image

UPSCALE = 4      # pictures are 48 px: shown 4x larger, nearest neighbour


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL file ([] when it does not exist)."""
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _upscaled(image: np.ndarray, factor: int = UPSCALE) -> Image.Image:
  image = Image.fromarray(np.asarray(image, np.uint8))
  return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def plot_losses(vq_metrics: list[dict], stage_metrics: dict[int, list[dict]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = 1 + len(stage_metrics)
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
  ax = axes[0][0]
  if vq_metrics:
    ax.plot([m["step"] for m in vq_metrics], [m["recon"] for m in vq_metrics], label="reconstruction MSE", marker=".")
    ax.plot([m["step"] for m in vq_metrics], [m["commitment"] for m in vq_metrics],
            label="commitment", marker=".")
    ax.set_yscale("log")
  ax.set_title("VQ tokenizer")
  ax.set_xlabel("step")
  ax.legend(fontsize=8)
  for ax, (stage, rows) in zip(axes[0][1:], sorted(stage_metrics.items())):
    for kind in ("understanding", "text", "t2i"):
      points = [(m["step"], m[f"loss/{kind}"]) for m in rows
                if m.get(f"loss/{kind}") is not None and np.isfinite(m[f"loss/{kind}"])]
      if points:
        ax.plot(*zip(*points), label=kind, marker=".", markersize=3)
    ax.set_title(f"Stage {'I' * stage if stage < 4 else stage}")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
  axes[0][1 if panels > 1 else 0].set_ylabel("loss (per target token)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def save_pairs(originals: np.ndarray, reconstructions: np.ndarray, path: str,
               count: int = 8) -> None:
  """Two rows: pictures and their VQ reconstructions."""
  count = min(count, len(originals))
  rows = [np.concatenate(list(originals[:count]), axis=1),
          np.concatenate(list(reconstructions[:count]), axis=1)]
  _upscaled(np.concatenate(rows, axis=0), 2).save(path)


def _score_table(results: dict) -> str:
  """results: {"trained": {...}, "untrained": {...}} with "geneval" and "vqa" entries."""
  from janus_jax.demo import world
  head = "".join(f"<th>{html.escape(name)}</th>" for name in results)
  rows = []
  for tag in world.CATEGORIES:
    cells = "".join(f"<td>{r['geneval']['categories'].get(tag, float('nan')):.3f}</td>"
                    for r in results.values())
    rows.append(f"<tr><td>GenEval: {tag}</td>{cells}</tr>")
  cells = "".join(f"<td><b>{r['geneval']['overall']:.3f}</b></td>" for r in results.values())
  rows.append(f"<tr><td><b>mini-GenEval overall</b></td>{cells}</tr>")
  cells = "".join(f"<td><b>{r['vqa']['accuracy']:.3f}</b></td>" for r in results.values())
  rows.append(f"<tr><td><b>VQA accuracy</b></td>{cells}</tr>")
  return f"<table><tr><th>score</th>{head}</tr>{''.join(rows)}</table>"


def write_report(workdir: str, summary: dict) -> str:
  """Writes <workdir>/report/index.html from the run's outputs and `summary` (see
  demo.run); returns its path."""
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  stage_metrics = {s: read_jsonl(os.path.join(workdir, f"stage{s}", "metrics.jsonl"))
                   for s in (1, 2, 3)}
  plot_losses(read_jsonl(os.path.join(workdir, "vq", "metrics.jsonl")), stage_metrics,
              os.path.join(out, "losses.png"))
  parts = ["<h1>janus-jax demo: a Janus trained from nothing on the shapes world</h1>",
           f"<p>{html.escape(summary['headline'])}</p>",
           "<h2>Scores</h2>", _score_table(summary["results"]),
           "<p>mini-GenEval: held-out prompts in GenEval's six categories, "
           f"{summary['images_per_prompt']} images each (CFG weight {summary['cfg_weight']}), "
           "scored by the rule-based detector (which scores "
           f"{summary['detector_on_ground_truth']:.3f} on ground-truth pictures of the same "
           "prompts). VQA: exact match of the normalised one-word answer on held-out "
           "pictures. <i>untrained</i>: the same evaluation of the Stage I starting point "
           "(random LLM, trained VQ).</p>",
           "<h2>Training</h2><img src='losses.png'>",
           "<table><tr><th>phase</th><th>steps</th><th>seconds</th><th>last losses</th></tr>"]
  for phase in summary["phases"]:
    parts.append(f"<tr><td>{html.escape(phase['name'])}</td><td>{phase.get('steps', '')}</td>"
                 f"<td>{phase['seconds']:.1f}</td>"
                 f"<td>{html.escape(phase.get('detail', ''))}</td></tr>")
  parts.append("</table>")
  parts += ["<h2>VQ tokenizer</h2>",
            f"<p>{html.escape(summary['vq_detail'])}</p><img src='vq_reconstructions.png'>"]

  geneval = summary["results"]["trained"]["geneval"]
  geneval_dir = summary["geneval_dir"]
  parts.append("<h2>Generated images (held-out prompts)</h2><table>"
               "<tr><th>category</th><th>prompt</th><th>images</th><th>correct</th></tr>")
  for prompt in geneval["prompts"]:
    grid = os.path.join(geneval_dir, f"{prompt['index']:05d}", "grid.png")
    name = f"gen_{prompt['index']:05d}.png"
    if os.path.isfile(grid):
      _upscaled(np.asarray(Image.open(grid).convert("RGB")), 2).save(os.path.join(out, name))
    parts.append(f"<tr><td>{prompt['tag']}</td><td>{html.escape(prompt['prompt'])}</td>"
                 f"<td><img src='{name}'></td>"
                 f"<td>{sum(prompt['correct'])}/{len(prompt['correct'])}</td></tr>")
  parts.append("</table>")

  parts.append("<h2>Chat examples (held-out pictures)</h2><table>"
               "<tr><th>picture</th><th>question</th><th>answer</th><th>expected</th></tr>")
  for i, row in enumerate(summary["results"]["trained"]["vqa"]["answers"][:24]):
    name = f"chat_{i:02d}.png"
    _upscaled(np.asarray(Image.open(row["image"]).convert("RGB")), 2).save(
        os.path.join(out, name))
    mark = "&#10003;" if row["correct"] else "&#10007;"
    parts.append(f"<tr><td><img src='{name}'></td><td>{html.escape(row['question'])}</td>"
                 f"<td>{html.escape(row['answer'])} {mark}</td>"
                 f"<td>{html.escape(row['expected'])}</td></tr>")
  parts.append("</table>")
  parts.append(f"<h2>Use the checkpoint</h2><pre>{html.escape(summary['usage'])}</pre>")
  style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
           "img{image-rendering:pixelated}</style>")
  path = os.path.join(out, "index.html")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>janus-jax demo</title>"
            f"{style}</head><body>{''.join(parts)}</body></html>\n")
  os.replace(tmp, path)
  return path
