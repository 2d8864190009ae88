"""Figures drawn from a model's outputs on held-out scenes (evaluation and the demo): each patch
coloured by its nearest class prompt, and the segmentation probe's masks beside the truth."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.fashion_mnist import CLASS_NAMES  # noqa: E402
from ..data.scenes import EVAL_SCENE_SEED, FashionScenes  # noqa: E402
from ..methods.base import ImageTextMethod  # noqa: E402
from ..transforms import ZEROSHOT_TEMPLATES, fill_template, to_float  # noqa: E402
from .inference import evaluating  # noqa: E402
from .zeroshot import zeroshot_classifier  # noqa: E402

CLASS_COLOURS = plt.get_cmap("tab10")(np.arange(10))[:, :3]


def mask_colours(mask: np.ndarray) -> np.ndarray:
    """(H, W) class mask (0 = background, 1 + label) -> RGB in the class palette, black background."""
    return np.where(mask[..., None] > 0, CLASS_COLOURS[np.maximum(mask - 1, 0)], 0.0)


@torch.no_grad()
def patch_classes(model: ImageTextMethod, images: torch.Tensor) -> np.ndarray:
    """(B, grid, grid): the class prompt each patch's projected feature is most similar to."""
    with evaluating(model) as device:
        classifier = zeroshot_classifier(model, CLASS_NAMES, ZEROSHOT_TEMPLATES, fill=fill_template)
        tokens = model.visual.forward_features(to_float(images.to(device)))
    grid = model.config.model.img_size // model.config.model.patch_size
    return (model.patch_embeddings(tokens).float() @ classifier).argmax(-1).reshape(-1, grid, grid).cpu().numpy()


def plot_patch_classes(model: ImageTextMethod, png: Path, num_scenes: int = 6, data_root: str | None = None) -> None:
    """For held-out scenes: the image, each patch coloured by the class prompt its projected
    feature is most similar to, and the ground-truth mask at patch resolution."""
    canvas, patch = model.config.model.img_size, model.config.model.patch_size
    scenes = FashionScenes("test", canvas=canvas, seed=EVAL_SCENE_SEED, root=data_root)
    samples = [scenes[i] for i in range(num_scenes)]
    pred = patch_classes(model, torch.stack([s["image"] for s in samples]))
    grid = canvas // patch
    fig, axes = plt.subplots(3, num_scenes, figsize=(2.1 * num_scenes, 7.2))
    for j, sample in enumerate(samples):
        mask = sample["mask"].numpy()
        item_patches = mask.reshape(grid, patch, grid, patch).max(axis=(1, 3))
        truth = mask_colours(item_patches)
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
    add_class_legend(fig)
    fig.text(0.01, 0.5, "dimmed: patches with no item (ground truth)", rotation=90, va="center", fontsize=7)
    fig.tight_layout(rect=(0.02, 0.07, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_segmentation_examples(samples: list[dict], predictions: torch.Tensor, png: Path) -> None:
    """Columns of held-out scenes: the image, the true mask, the linear probe's mask."""
    fig, axes = plt.subplots(3, len(samples), figsize=(2.0 * len(samples), 6.4), squeeze=False)
    for j, (sample, pred) in enumerate(zip(samples, predictions)):
        for row, (picture, title) in enumerate([
            (sample["image"].permute(1, 2, 0).numpy(), "image"),
            (mask_colours(sample["mask"].numpy()), "truth"),
            (mask_colours(pred.numpy()), "prediction"),
        ]):
            axes[row, j].imshow(picture, interpolation="nearest")
            axes[row, j].set_xticks([]), axes[row, j].set_yticks([])
            axes[row, j].set_title(title, fontsize=8)
    add_class_legend(fig)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def add_class_legend(fig: plt.Figure) -> None:
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[c]) for c in range(10)]
    fig.legend(handles, CLASS_NAMES, loc="lower center", ncol=5, fontsize=8)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
