"""The model card (``README.md``) every exported folder carries, written from the run itself.

Hugging Face Hub layout: YAML front matter (licence, library, tags, pipeline, data sets, and
every metric of the run's result files in ``model-index`` form), then what the model is, its
data and budget, the full config, the evaluation with the command that produced it, and the
limits. Only results of the exported checkpoint are used; none are invented.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .api import run_name
from .config import to_dict
from .eval.registry import LEGACY_HEADLINE, headline_value
from .files import read_jsonl, write_atomic
from .methods.base import PretrainMethod

LICENSE = "apache-2.0"  # langmim's own; the weights are the user's, trained on their data
PIPELINES = {"timm": "image-feature-extraction", "open_clip": "zero-shot-image-classification"}
TASK_TYPES = {"zeroshot": "zero-shot-image-classification", "retrieval": "image-to-text", "detection": "object-detection",
              "segmentation": "image-segmentation"}


def checkpoint_results(model: PretrainMethod) -> list[dict]:
    """Result JSONs in the run's ``results/`` folder that were computed on this very checkpoint."""
    checkpoint = Path(model.checkpoint_path).resolve()
    results = []
    for path in sorted((checkpoint.parent / "results").glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and result.get("checkpoint") and Path(result["checkpoint"]).resolve() == checkpoint:
            results.append(result)
    return results


def model_index(name: str, results: list[dict]) -> list[dict]:
    """Every numeric metric of the results, in the Hub's ``model-index`` schema."""
    entries = []
    for r in results:
        metrics = [{"type": key, "value": value, "name": f"{r['task']} {key}"}
                   for key, value in r["metrics"].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
        entries.append({"task": {"type": TASK_TYPES.get(r["task"], "image-classification"), "name": r["task"]},
                        "dataset": {"name": r["dataset"], "type": r["dataset"]}, "metrics": metrics})
    return [{"name": name, "results": entries}]


def training_seconds(run_dir: Path, log_every: int, batch_size: int) -> float | None:
    """Training time from ``metrics.jsonl``: each record covers ``log_every`` steps at its images/s."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = read_jsonl(path)
    return sum(log_every * batch_size / r["images_per_s"] for r in records if r.get("images_per_s"))


def front_matter(model: PretrainMethod, fmt: str, name: str, results: list[dict]) -> dict[str, Any]:
    cfg = model.config
    datasets = ["fashion_mnist"] if cfg.data.name == "fashion-scenes" else [Path(str(cfg.data.root)).name or cfg.data.name]
    return {
        "license": LICENSE,
        "library_name": fmt,
        "tags": ["langmim", cfg.method, "vision-transformer", *model.tags],
        "pipeline_tag": PIPELINES[fmt],
        "datasets": datasets,
        "model-index": model_index(name, results),
    }


def card_text(model: PretrainMethod, fmt: str, name: str) -> str:
    cfg, m, t = model.config, model.config.model, model.config.train
    title = model.title or model.name
    results = checkpoint_results(model)
    params = sum(p.numel() for p in model.visual.parameters())
    seconds = training_seconds(Path(model.checkpoint_path).parent, t.log_every, t.batch_size)
    data = ("fashion-scenes: generated captioned scenes of Fashion-MNIST items (langmim's built-in data)"
            if cfg.data.name == "fashion-scenes" else f"{cfg.data.name} at `{cfg.data.root}`")
    lines = [
        "---", yaml.safe_dump(front_matter(model, fmt, name, results), sort_keys=False).strip(), "---", "",
        f"# {name}: {title} ViT ({m.arch}), exported by langmim", "",
        f"A vision transformer pre-trained with **{title}** by "
        "langmim (masked image modelling in a language semantic space). "
        f"Encoder: {m.img_size} px, patch {m.patch_size}, width {m.width}, depth {m.depth}, {m.heads} heads, "
        f"{params / 1e6:.2f}M parameters; pixels normalised with mean = std = 0.5.", "",
        "## Data and budget", "",
        f"- Data: {data}.",
        f"- Steps: {model.step} of {t.steps} planned, batch {t.batch_size}: {model.step * t.batch_size:,} images seen."
        if model.step is not None else f"- Steps planned: {t.steps}, batch {t.batch_size}.",
        f"- Training time: about {seconds:.0f} s (from the run's metrics log)." if seconds else "- Training time: not logged.",
        f"- Precision: `{t.precision}`; device setting `{t.device}`; AdamW lr {t.lr:g}, weight decay {t.weight_decay:g}.",
        "", "## Evaluation", "",
    ]
    if results:
        tasks = sorted({r["task"] for r in results})
        lines += [f"`langmim eval --checkpoint RUN --tasks {','.join(tasks)}` on this checkpoint:", "",
                  "| task | data set | headline metric | headline (%) | split sizes |", "|---|---|---|---|---|"]
        for r in sorted(results, key=lambda r: r["task"]):
            value = headline_value(r)
            lines.append(f"| {r['task']} | {r['dataset']} | {r.get('headline', LEGACY_HEADLINE)} | "
                         f"{float('nan') if value is None else value:.2f} | {r.get('split_sizes', {})} |")
    else:
        lines += ["No evaluation of this checkpoint was found in the run's `results/` folder; run "
                  "`langmim eval --checkpoint RUN --tasks all` before exporting to fill this section."]
    lines += [
        "", "## Limits", "",
        "- A small-scale run: its figures show what this budget bought on this data, not what the method "
        "achieves at paper scale.",
        *(["- Trained on generated captions over 28x28 garment images: not a general-purpose encoder."]
          if cfg.data.name == "fashion-scenes" else []),
        "- The figures come from langmim's own evaluation protocols (see `docs/evaluation.md` in its repository).",
        "", "## Config", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).strip(), "```", "",
    ]
    return "\n".join(lines)


def write_model_card(model: PretrainMethod, fmt: str, out: Path) -> Path:
    """``out/README.md`` for an exported folder; the model is named after its run directory."""
    card = out / "README.md"
    write_atomic(card, card_text(model, fmt, run_name(model)))
    return card
