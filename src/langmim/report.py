"""Human-readable reports: markdown tables and PNG figures from a run's metrics and results."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data.fashion_mnist import CLASS_NAMES  # noqa: E402
from .data.scenes import ZEROSHOT_TEMPLATES, FashionScenes, fill_template, to_float  # noqa: E402
from .eval.zeroshot import zeroshot_classifier  # noqa: E402
from .methods.base import ImageTextMethod  # noqa: E402

CLASS_COLOURS = plt.get_cmap("tab10")(np.arange(10))[:, :3]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(metrics_path: Path, png: Path) -> None:
    """One panel per logged loss term (and RILS's share of samples with c_i = 1)."""
    records = read_metrics(metrics_path)
    keys = [k for k in ("loss", "loss_clip", "loss_rec", "match_rate") if k in records[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [r[key] for r in records], color="tab:blue")
        ax.set_title(key if key != "match_rate" else "share of samples with c_i = 1")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_patch_classes(model: ImageTextMethod, png: Path, num_scenes: int = 6, data_root: str | None = None) -> None:
    """For held-out scenes: the image, each patch coloured by the class prompt its projected
    feature is most similar to, and the ground-truth mask at patch resolution."""
    model.eval()
    canvas, patch = model.config.model.img_size, model.config.model.patch_size
    scenes = FashionScenes("test", canvas=canvas, seed=1, root=data_root)
    samples = [scenes[i] for i in range(num_scenes)]
    images = torch.stack([s["image"] for s in samples])
    device = next(model.parameters()).device
    classifier = zeroshot_classifier(model, CLASS_NAMES, ZEROSHOT_TEMPLATES, fill=fill_template)
    tokens = model.visual.forward_features(to_float(images.to(device)))
    grid = canvas // patch
    pred = (model.patch_embeddings(tokens).float() @ classifier).argmax(-1).reshape(-1, grid, grid).cpu().numpy()
    fig, axes = plt.subplots(3, num_scenes, figsize=(2.1 * num_scenes, 7.2))
    for j, sample in enumerate(samples):
        mask = sample["mask"].numpy()
        item_patches = mask.reshape(grid, patch, grid, patch).max(axis=(1, 3))
        truth = np.where(item_patches[..., None] > 0, CLASS_COLOURS[np.maximum(item_patches - 1, 0)], 0.0)
        predicted = CLASS_COLOURS[pred[j]] * np.where(item_patches > 0, 1.0, 0.35)[..., None]
        for row, (picture, title) in enumerate([
            (sample["image"].permute(1, 2, 0).numpy(), sample["caption"]),
            (predicted, "patch -> class prompt"),
            (truth, "ground truth"),
        ]):
            ax = axes[row, j]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(_wrap(title, 24), fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[c]) for c in range(10)]
    fig.legend(handles, CLASS_NAMES, loc="lower center", ncol=5, fontsize=8)
    fig.text(0.01, 0.5, "dimmed: patches with no item (ground truth)", rotation=90, va="center", fontsize=7)
    fig.tight_layout(rect=(0.02, 0.07, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def comparison_table(columns: dict[str, dict[str, dict]]) -> str:
    """Markdown table: one row per metric, one column per model (results keyed by task)."""
    rows = [
        ("zero-shot top-1 (%)", "zeroshot", "top1"),
        ("k-NN top-1, k=20, patch mean (%)", "knn", "mean_top1_k20"),
        ("k-NN top-1, k=20, CLS (%)", "knn", "cls_top1_k20"),
        ("linear probe top-1, patch mean (%)", "linear", "mean_top1"),
        ("linear probe top-1, CLS (%)", "linear", "cls_top1"),
    ]
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, task, key in rows:
        cells = []
        for name in names:
            value = columns[name].get(task, {}).get("metrics", {}).get(key)
            cells.append("n/a" if value is None else f"{value:.2f}")
        if any(c != "n/a" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
