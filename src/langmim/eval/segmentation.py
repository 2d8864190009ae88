"""Linear segmentation probe on frozen patch tokens (dinov2's linear head), scored by mIoU.

Each patch token goes through one linear layer to per-class logits; the (grid x grid) logit map
(the refined grid of `scene_features.dense_patch_tokens`) is upsampled bilinearly to pixels and trained with per-pixel cross-entropy against the exact
scene masks (background is class 0, item classes are 1 + Fashion-MNIST label). The head trains
on scenes of train-split items and is scored on scenes of test-split items.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.fashion_mnist import CLASS_NAMES
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts; rows are the true class, columns the predicted one."""
    index = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_scores(confusion: Tensor) -> dict[str, float | list]:
    """mIoU over the classes that occur in truth or prediction, per-class IoU, pixel accuracy
    (percent). A class absent from both has no IoU (None) and is left out of the mean."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp_min(1), torch.zeros_like(union))
    return {
        "miou": 100.0 * iou[present].mean().item(),
        "pixel_accuracy": 100.0 * (true_positive.sum() / confusion.sum()).item(),
        "per_class_iou": [100.0 * v if p else None for v, p in zip(iou.tolist(), present.tolist())],
    }


class SegmentationHead(nn.Module):
    """Per-class logits on the token grid: a linear layer per token (``kernel=1``, dinov2's linear
    head), or a ``kernel`` x ``kernel`` convolution that also reads the neighbouring tokens."""

    def __init__(self, dim: int, num_classes: int, kernel: int = 1) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"segmentation head kernel must be odd and positive, got {kernel}")
        self.conv = nn.Conv2d(dim, num_classes, kernel, padding=kernel // 2)

    def forward(self, tokens: Tensor) -> Tensor:
        """(n, N, D) row-major tokens -> (n, C, G, G) logits."""
        grid = int(round(tokens.shape[1] ** 0.5))
        return self.conv(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid))


def pixel_logits(head: SegmentationHead, tokens: Tensor, size: int) -> Tensor:
    """(n, N, D) patch tokens -> (n, C, size, size) upsampled logits."""
    return F.interpolate(head(tokens), size=(size, size), mode="bilinear", align_corners=False)


def balanced_class_weights(masks: Tensor, num_classes: int) -> Tensor:
    """Cross-entropy weights proportional to 1 / sqrt(pixel frequency), mean 1 over the classes
    present: background fills most pixels, and a head trained unweighted learns mostly it."""
    counts = torch.bincount(masks.flatten(), minlength=num_classes).double()
    weights = torch.where(counts > 0, counts.clamp_min(1).rsqrt(), torch.zeros_like(counts))
    return (weights / weights[counts > 0].mean()).float()


def train_segmentation_head(
    tokens: Tensor, masks: Tensor, num_classes: int, epochs: int = 20, lr: float = 1e-2,
    batch_size: int = 128, seed: int = 0, kernel: int = 1, balanced: bool = False,
) -> tuple[SegmentationHead, Tensor, Tensor]:
    """AdamW + cosine on standardised tokens; returns the head and the token mean/std it expects.
    ``balanced`` weights the pixels' cross-entropy by `balanced_class_weights`."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = tokens.mean(dim=(0, 1)), tokens.std(dim=(0, 1)).clamp_min(1e-6)
    x = (tokens - mean) / std
    head = SegmentationHead(tokens.shape[-1], num_classes, kernel)
    nn.init.normal_(head.conv.weight, std=0.01 / kernel, generator=generator)
    nn.init.zeros_(head.conv.bias)
    weight = balanced_class_weights(masks, num_classes) if balanced else None
    steps = epochs * -(-len(x) // batch_size)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.enable_grad():
        for _ in range(epochs):
            for rows in torch.randperm(len(x), generator=generator).split(batch_size):
                loss = F.cross_entropy(pixel_logits(head, x[rows], masks.shape[-1]), masks[rows], weight=weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    return head.requires_grad_(False), mean, std


def segmentation_probe(
    train_tokens: Tensor, train_masks: Tensor, test_tokens: Tensor, test_masks: Tensor, num_classes: int,
    batch_size: int = 256, epochs: int = 20, seed: int = 0, num_examples: int = 6, kernel: int = 1, balanced: bool = False,
) -> dict:
    """Fit the linear head on train scenes' patch tokens (n, G, G, D) and pixel masks (n, H, W);
    score mIoU, foreground mIoU (the item classes only, background left out) and pixel accuracy
    on the test scenes, and split what the head gets right into where and what: ``item_iou``
    (any item against background) and ``garment_accuracy_on_items`` (the best garment class on
    the true item pixels). ``example_predictions`` holds the first ``num_examples`` masks."""
    train_tokens, test_tokens = train_tokens.flatten(1, 2), test_tokens.flatten(1, 2)
    train_masks, test_masks = train_masks.long(), test_masks.long()
    head, mean, std = train_segmentation_head(train_tokens, train_masks, num_classes, epochs=epochs, seed=seed,
                                              kernel=kernel, balanced=balanced)
    batches = ((pixel_logits(head, (test_tokens[rows] - mean) / std, test_masks.shape[-1]), test_masks[rows])
               for rows in torch.arange(len(test_tokens)).split(batch_size))
    scores = segmentation_scores(batches, num_classes, num_examples)
    scores.update({"n_train": len(train_tokens), "n_test": len(test_tokens), "epochs": epochs})
    return scores


def segmentation_scores(batches: Iterable[tuple[Tensor, Tensor]], num_classes: int, num_examples: int = 6) -> dict:
    """Score (pixel logits (b, C, H, W), true masks (b, H, W)) batches: `iou_scores` plus
    ``foreground_miou``, ``item_iou``, ``garment_accuracy_on_items`` (see `segmentation_probe`)
    and the first ``num_examples`` predicted masks as ``example_predictions``."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    item_confusion = torch.zeros(2, 2, dtype=torch.long)
    garment_hits = item_pixels = 0
    examples = []
    for logits, truth in batches:
        pred, truth = logits.argmax(dim=1), truth.long()
        confusion += confusion_matrix(pred, truth, num_classes)
        item_confusion += confusion_matrix(pred > 0, truth > 0, 2)
        on_items = truth > 0
        garment_hits += int((logits[:, 1:].argmax(dim=1) + 1)[on_items].eq(truth[on_items]).sum())
        item_pixels += int(on_items.sum())
        examples.append(pred[: max(0, num_examples - sum(len(e) for e in examples))])
    scores = iou_scores(confusion)
    foreground = [v for v in scores["per_class_iou"][1:] if v is not None]
    scores.update({"foreground_miou": sum(foreground) / len(foreground) if foreground else float("nan"),
                   "item_iou": iou_scores(item_confusion)["per_class_iou"][1],
                   "garment_accuracy_on_items": 100.0 * garment_hits / max(1, item_pixels),
                   "example_predictions": torch.cat(examples)})
    return scores


@task("segmentation", headline="miou", dataset="fashion-scenes-masks")
def segmentation_task(ctx: EvalContext) -> dict[str, Any]:
    train, test = ctx.scene_features("train"), ctx.scene_features("test")
    scores = segmentation_probe(train["dense"], train["mask"], test["dense"], test["mask"], num_classes=1 + len(CLASS_NAMES),
                                batch_size=ctx.cfg.batch_size, epochs=ctx.cfg.segmentation_epochs, seed=ctx.cfg.seed)
    predictions = scores.pop("example_predictions")
    if ctx.out_dir is not None:
        from .figures import plot_segmentation_examples

        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        scenes = ctx.scenes("test")
        plot_segmentation_examples([scenes[i] for i in range(len(predictions))], predictions,
                                   ctx.out_dir / f"{ctx.model_name}_segmentation_examples.png")
    per_class = scores.pop("per_class_iou")
    metrics = {key: scores[key] for key in ("miou", "foreground_miou", "pixel_accuracy", "item_iou", "garment_accuracy_on_items")}
    return {"metrics": metrics, "details": {"per_class_iou": dict(zip(["background", *CLASS_NAMES], per_class)),
                                            "epochs": scores["epochs"], "refine": ctx.cfg.dense_refine},
            "split_sizes": {"train": scores["n_train"], "test": scores["n_test"]}}
