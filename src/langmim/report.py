"""Human-readable reports: markdown tables and PNG figures from a run's metrics and result
files. It reads files only (no model runs here), so ``langmim report`` starts without torch;
matplotlib is imported when a figure is drawn."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import LangmimError
from .eval.clip_benchmark import from_clip_benchmark


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(metrics_path: Path, png: Path) -> None:
    """One panel per logged loss term (and RILS's share of samples with c_i = 1)."""
    plt = pyplot()
    records = read_metrics(metrics_path)
    keys = [k for k in ("loss", "loss_clip", "loss_rec", "match_rate") if k in records[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [r[key] for r in records], color="tab:blue")
        titles = {"match_rate": "share of samples with c_i = 1", "loss_rec": "loss_rec (samples with c_i = 1)"}
        ax.set_title(titles.get(key, key))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# (label, task, metric key) of the summary table, in reading order.
TABLE_ROWS = (
    ("zero-shot top-1 (%)", "zeroshot", "top1"),
    ("retrieval R@1 image->text (%)", "retrieval", "image_to_text_R@1"),
    ("retrieval R@1 text->image (%)", "retrieval", "text_to_image_R@1"),
    ("k-NN top-1, k=20, patch mean (%)", "knn", "mean_top1_k20"),
    ("k-NN top-1, k=20, CLS (%)", "knn", "cls_top1_k20"),
    ("linear probe top-1, patch mean (%)", "linear", "mean_top1"),
    ("linear probe top-1, CLS (%)", "linear", "cls_top1"),
    ("few-shot 1-shot, prototype, patch mean (%)", "fewshot", "mean_prototype_1shot"),
    ("few-shot 16-shot, logistic, patch mean (%)", "fewshot", "mean_logistic_16shot"),
    ("fine-tuning top-1 (%)", "finetune", "top1"),
    ("scene presence mAP, patch mean (%)", "presence", "mean_map"),
    ("scene presence 4-shot mAP, patch mean (%)", "presence", "mean_lowshot_4"),
    ("garment per occupied cell (%)", "cells", "occupied_accuracy"),
    ("colour of a named garment, patch mean (%)", "binding", "mean_top1"),
    ("item count, patch mean (%)", "counting", "mean_top1"),
    ("compositional zero-shot, mean over kinds (%)", "compositional", "mean_acc"),
    ("detection AP50 (%)", "detection", "ap50"),
    ("detection AP (%)", "detection", "ap"),
    ("segmentation mIoU (%)", "segmentation", "miou"),
    ("segmentation foreground mIoU (%)", "segmentation", "foreground_miou"),
    ("shifted renders: linear probe, mean of styles (%)", "shift", "linear_shifted_mean"),
    ("shifted renders: zero-shot, mean of styles (%)", "shift", "zeroshot_shifted_mean"),
)
NO_TEXT_TASKS = ("zeroshot", "retrieval", "compositional")


def comparison_table(columns: dict[str, dict[str, dict]], has_text: dict[str, bool] | None = None, floor: str | None = None) -> str:
    """Markdown table: one row per metric that any model has, one column per model (results
    keyed by task). A text task of a model without a text tower reads "n/a, no text tower".
    With ``floor`` (a column's name, e.g. the random-init model), each other model also gets a
    column of its margin over the floor, in points."""
    names = list(columns)
    others = [n for n in names if n != floor] if floor in columns else []
    header = names + [f"{n} minus {floor}" for n in others]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for label, task, key in TABLE_ROWS:
        values = {name: columns[name].get(task, {}).get("metrics", {}).get(key) for name in names}
        cells = []
        for name in names:
            if values[name] is None:
                no_text = has_text is not None and not has_text.get(name, True) and task in NO_TEXT_TASKS
                cells.append("n/a, no text tower" if no_text else "n/a")
            else:
                cells.append(f"{values[name]:.2f}")
        cells += [f"{values[n] - values[floor]:+.2f}" if None not in (values[n], values[floor]) else "n/a" for n in others]
        if any(c[0].isdigit() for c in cells[: len(names)]):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_results(results_dir: Path) -> dict[str, dict[str, dict]]:
    """{model name: {task: result}} from the result JSONs of a directory: langmim's own, and
    CLIP_benchmark's (its ``clip_benchmark/`` sub-folder of a run, or anyone's published files)."""
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise LangmimError(f"result file '{path}' is not valid JSON") from None
        result = from_clip_benchmark(result) or result
        if {"model", "task", "metrics"} <= set(result):
            found.setdefault(result["model"], {})[result["task"]] = result
    return found


def plot_fewshot(columns: dict[str, dict[str, dict]], png: Path) -> bool:
    """Few-shot top-1 against shots per class, one line per model (mean +- std over seeds)."""
    curves = {name: results.get("fewshot", {}).get("details", {}).get("mean") for name, results in columns.items()}
    curves = {name: details for name, details in curves.items() if details}
    if not curves:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for name, details in curves.items():
        shots = sorted(details, key=int)
        for ax, classifier in zip(axes, ("prototype", "logistic")):
            means = [details[n][classifier]["mean"] for n in shots]
            stds = [details[n][classifier]["std"] for n in shots]
            ax.errorbar([int(n) for n in shots], means, yerr=stds, marker="o", capsize=3, label=name)
    for ax, classifier in zip(axes, ("prototype", "logistic")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled images per class")
        ax.set_title(f"few-shot, {classifier} (patch mean)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def plot_retrieval(columns: dict[str, dict[str, dict]], png: Path) -> bool:
    """Recall@1/5/10 in both directions, grouped bars per model."""
    models = [n for n, r in columns.items() if "retrieval" in r]
    if not models:
        return False
    import numpy as np

    plt = pyplot()
    keys = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / len(models)
    for i, name in enumerate(models):
        metrics = columns[name]["retrieval"]["metrics"]
        ax.bar(np.arange(len(keys)) + i * width, [metrics[k] for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([k.replace("image_to_text", "i->t").replace("text_to_image", "t->i") for k in keys])
    ax.set_ylabel("recall (%)")
    ax.set_title("retrieval on held-out captioned scenes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def write_report(run_dirs: list[Path], out_dir: Path, floor: str | None = None) -> Path:
    """Compile the result JSONs of several runs into ``out_dir/report.md`` and PNG figures."""
    columns: dict[str, dict[str, dict]] = {}
    has_text: dict[str, bool] = {}
    labels: dict[str, str] = {}  # model name -> its column, which carries the checkpoint step
    mixed: list[str] = []
    for run_dir in run_dirs:
        results_dir = run_dir / "results" if (run_dir / "results").is_dir() else run_dir
        if not results_dir.is_dir():
            raise LangmimError(f"'{run_dir}' is not a run directory or a results directory")
        found = read_results(results_dir)
        if not found:
            raise LangmimError(f"no result JSONs in '{results_dir}'; run langmim eval --checkpoint {run_dir} first")
        for model, results in found.items():
            label = model if model not in columns else f"{model} ({run_dir.name})"
            steps = sorted({r["step"] for r in results.values() if r.get("step") is not None})
            if len(steps) > 1:
                mixed.append(f"column '{label}' mixes results of checkpoint steps {', '.join(map(str, steps))}")
                print(f"report: warning: {mixed[-1]}")
            label = f"{label} (step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))})" if steps else label
            labels.setdefault(model, label)
            columns[label] = results
            first = next(iter(results.values()))  # result files older than "has_text": judged by the tasks they have
            has_text[label] = first["has_text"] if "has_text" in first else any(t in results for t in NO_TEXT_TASKS)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(columns, has_text, labels.get(floor, floor))
    lines = ["# langmim report", "", "Runs: " + ", ".join(f"`{d}`" for d in run_dirs), "", table, ""]
    lines += [f"**Warning**: {m}: re-run `langmim eval` on one checkpoint for a comparable column." for m in mixed]
    if plot_fewshot(columns, out_dir / "fewshot.png"):
        lines += ["## Few-shot", "![few-shot](fewshot.png)", ""]
    if plot_retrieval(columns, out_dir / "retrieval.png"):
        lines += ["## Retrieval", "![retrieval](retrieval.png)", ""]
    examples = [p for d in run_dirs for p in sorted((d / "results" if (d / "results").is_dir() else d).glob("*_segmentation_examples.png"))]
    if examples:
        lines += ["## Segmentation examples (image, truth, prediction)"]
        for png in examples:
            target = out_dir / f"{png.parent.parent.name}_{png.name}" if png.parent.name == "results" else out_dir / png.name
            if target.resolve() != png.resolve():
                target.write_bytes(png.read_bytes())
            lines += [f"![{png.stem}]({target.name})"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
