"""The report's PNG figures: loss curves of a run's metrics log, few-shot curves and retrieval bars
across models, and the runs' segmentation examples copied beside the report. matplotlib is
imported when a figure is drawn."""
from __future__ import annotations

from pathlib import Path

from ..files import read_jsonl
from .runs import results_dir_of


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(metrics_path: Path, png: Path) -> None:
    """One panel per logged loss term (and RILS's share of samples with c_i = 1)."""
    plt = pyplot()
    records = read_jsonl(metrics_path)
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


def segmentation_examples(run_dirs: list[Path], out_dir: Path) -> list[str]:
    """Copy the runs' segmentation example PNGs next to the report; its markdown lines."""
    examples = [p for d in run_dirs for p in sorted(results_dir_of(d).glob("*_segmentation_examples.png"))]
    if not examples:
        return []
    lines = ["## Segmentation examples (image, truth, prediction)"]
    for png in examples:
        target = out_dir / f"{png.parent.parent.name}_{png.name}" if png.parent.name == "results" else out_dir / png.name
        if target.resolve() != png.resolve():
            target.write_bytes(png.read_bytes())
        lines += [f"![{png.stem}]({target.name})"]
    return lines
