"""Linear segmentation probe on frozen patch tokens (dinov2's linear head), scored by mIoU.

Each patch token goes through one linear layer to per-class logits; the (grid x grid) logit map
is upsampled bilinearly to pixels and trained with per-pixel cross-entropy against the exact
scene masks (background is class 0, item classes are 1 + Fashion-MNIST label). The head trains
on scenes of train-split items and is scored on scenes of test-split items.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.scenes import collate_scenes, to_float


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


@torch.no_grad()
def patch_features(model: nn.Module, scenes: Dataset, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Patch tokens (n, N, D) of the encoder in eval mode and the pixel masks (n, H, W)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens, masks = [], []
    try:
        for batch in DataLoader(scenes, batch_size=batch_size, collate_fn=collate_scenes):
            tokens.append(model.visual.forward_features(to_float(batch["image"].to(device)))[:, 1:].float().cpu())
            masks.append(batch["mask"])
    finally:
        model.train(was_training)
    return torch.cat(tokens), torch.cat(masks)


def pixel_logits(head: nn.Linear, tokens: Tensor, size: int) -> Tensor:
    """(n, N, D) patch tokens -> (n, C, size, size) upsampled logits."""
    grid = int(round(tokens.shape[1] ** 0.5))
    logits = head(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def train_segmentation_head(
    tokens: Tensor, masks: Tensor, num_classes: int, epochs: int = 20, lr: float = 1e-2,
    batch_size: int = 128, seed: int = 0,
) -> tuple[nn.Linear, Tensor, Tensor]:
    """AdamW + cosine on standardised tokens; returns the head and the token mean/std it expects."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = tokens.mean(dim=(0, 1)), tokens.std(dim=(0, 1)).clamp_min(1e-6)
    x = (tokens - mean) / std
    head = nn.Linear(tokens.shape[-1], num_classes)
    nn.init.normal_(head.weight, std=0.01, generator=generator)
    nn.init.zeros_(head.bias)
    steps = epochs * -(-len(x) // batch_size)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.enable_grad():
        for _ in range(epochs):
            for rows in torch.randperm(len(x), generator=generator).split(batch_size):
                loss = F.cross_entropy(pixel_logits(head, x[rows], masks.shape[-1]), masks[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    return head.requires_grad_(False), mean, std


def segmentation_probe(
    model: nn.Module, train_scenes: Dataset, test_scenes: Dataset, num_classes: int,
    batch_size: int = 256, epochs: int = 20, seed: int = 0, num_examples: int = 6,
) -> dict:
    """Fit the linear head on ``train_scenes``, score mIoU and pixel accuracy on ``test_scenes``;
    ``example_predictions`` holds the predicted masks of the first ``num_examples`` test scenes."""
    train_tokens, train_masks = patch_features(model, train_scenes, batch_size)
    head, mean, std = train_segmentation_head(train_tokens, train_masks, num_classes, epochs=epochs, seed=seed)
    test_tokens, test_masks = patch_features(model, test_scenes, batch_size)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    examples = []
    for rows in torch.arange(len(test_tokens)).split(batch_size):
        pred = pixel_logits(head, (test_tokens[rows] - mean) / std, test_masks.shape[-1]).argmax(dim=1)
        confusion += confusion_matrix(pred, test_masks[rows], num_classes)
        examples.append(pred[: max(0, num_examples - sum(len(e) for e in examples))])
    scores = iou_scores(confusion)
    scores.update({"n_train": len(train_tokens), "n_test": len(test_tokens), "epochs": epochs,
                   "example_predictions": torch.cat(examples)})
    return scores
