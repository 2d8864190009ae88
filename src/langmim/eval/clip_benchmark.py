"""Results in CLIP_benchmark's schema, beside langmim's own, so ``clip_benchmark build`` merges
them with the published ones and ``langmim report`` reads theirs.

CLIP_benchmark writes one JSON per (dataset, pretrained, model, language, task) with top-level
``dataset``, ``model``, ``pretrained``, ``task``, ``language`` and ``metrics`` as fractions:
``acc1`` / ``acc5`` / ``mean_per_class_recall`` (zero-shot classification),
``image_retrieval_recall@k`` (text -> image) / ``text_retrieval_recall@k`` (image -> text), and
``lp_acc1`` (linear probe). langmim's percentages map onto those names; other tasks have no
CLIP_benchmark counterpart and are not written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import write_atomic

# langmim task -> (CLIP_benchmark task, {CLIP_benchmark metric: langmim metric})
TASK_MAP: dict[str, tuple[str, dict[str, str]]] = {
    "zeroshot": ("zeroshot_classification", {"acc1": "top1", "acc5": "top5", "mean_per_class_recall": "mean_per_class_recall"}),
    "retrieval": ("zeroshot_retrieval", {
        **{f"image_retrieval_recall@{k}": f"text_to_image_R@{k}" for k in (1, 5, 10)},
        **{f"text_retrieval_recall@{k}": f"image_to_text_R@{k}" for k in (1, 5, 10)},
    }),
    "linear": ("linear_probe", {"lp_acc1": "top1"}),
}
LANGMIM_TASKS = {cb_task: (task, names) for task, (cb_task, names) in TASK_MAP.items()}
SUBDIR = "clip_benchmark"


def pretrained_tag(result: dict[str, Any]) -> str:
    """CLIP_benchmark's ``pretrained`` field: the checkpoint file's name (step included)."""
    return Path(result["checkpoint"]).stem if result.get("checkpoint") else "random"


def to_clip_benchmark(result: dict[str, Any]) -> dict[str, Any] | None:
    """A langmim result in CLIP_benchmark's schema, or None for a task it does not have."""
    if result["task"] not in TASK_MAP:
        return None
    task, names = TASK_MAP[result["task"]]
    metrics = {cb: result["metrics"][ours] / 100.0 for cb, ours in names.items() if ours in result["metrics"]}
    return {"dataset": result["dataset"], "model": result["model"], "pretrained": pretrained_tag(result), "task": task,
            "metrics": metrics, "language": "en"}


def write_clip_benchmark(result: dict[str, Any], out_dir: Path) -> Path | None:
    """``out_dir/clip_benchmark/{dataset}_{pretrained}_{model}_{language}_{task}.json`` (its default name)."""
    converted = to_clip_benchmark(result)
    if converted is None:
        return None
    folder = out_dir / SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    c = converted
    path = folder / f"{c['dataset']}_{c['pretrained']}_{c['model']}_{c['language']}_{c['task']}.json".replace("/", "-")
    write_atomic(path, json.dumps(converted, indent=1))
    return path


def from_clip_benchmark(data: dict[str, Any]) -> dict[str, Any] | None:
    """A CLIP_benchmark result file as a langmim result (percentages), or None if it is not one."""
    if data.get("task") not in LANGMIM_TASKS or "pretrained" not in data or not isinstance(data.get("metrics"), dict):
        return None
    task, names = LANGMIM_TASKS[data["task"]]
    metrics = {ours: 100.0 * data["metrics"][cb] for cb, ours in names.items() if cb in data["metrics"]}
    if task == "linear":  # langmim's report reads the patch-mean probe's figure
        metrics["mean_top1"] = metrics.get("top1")
    return {"model": f"{data['model']} {data['pretrained']}", "task": task, "dataset": data["dataset"], "metrics": metrics,
            "config": {"method": f"clip_benchmark:{data['model']}"}, "has_text": True, "source": "clip_benchmark"}
