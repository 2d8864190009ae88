"""End-to-end fine-tuning as an evaluation task: the whole encoder plus a linear head, a small
version of ``langmim finetune`` (whose classifier and layer-decay groups it shares).

A copy of the vision tower is trained with a linear head on the pooled patch tokens, AdamW with
layer-wise lr decay (layer ``i`` of ``L`` gets ``decay ** (L + 1 - i)`` of the head's lr),
stochastic depth rising linearly over the blocks, label smoothing, and a linear warm-up then
cosine schedule. The checkpoint's own weights are never touched.

``finetune_lowshot`` runs the same recipe from few labels: garment presence (multi-label, 10
garments) in scenes of 1 to 3 train items, fine-tuned from each fraction (``eval.finetune_lowshot_fractions``,
1% and 10%) of a pool of ``eval.finetune_lowshot_scenes`` labelled scenes (20,000: 200 and 2,000
scenes, the smaller inside the larger) for at least ``eval.finetune_lowshot_steps`` steps, and
scored by mAP on the evaluation's test scenes. Scenes rather than centred Fashion-MNIST items:
on centred items a fine-tuned random init already reaches 76% top-1 from 1% of the labels, two
points under the supervised ceiling (docs/evaluation.md), so few labels there do not separate
initialisations.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.eval_rows import seeded_subset
from ..data.fashion_mnist import CLASS_NAMES
from ..data.scenes import collate_scenes
from ..engine.optim import lr_factor
from ..errors import DataError
from ..finetune.model import FineTuneClassifier, layer_decay_groups
from ..models.vit import MaskedVisionTransformer
from ..transforms import to_float
from .linear import accuracy, mean_average_precision
from .registry import task
from .scene_probes import NUM_GARMENTS

if TYPE_CHECKING:
    from .context import EvalContext


def finetune(
    visual: MaskedVisionTransformer, train: Dataset, test: Dataset, num_classes: int, *, epochs: int = 3,
    batch_size: int = 128, lr: float = 1e-3, layer_decay: float = 0.75, drop_path: float = 0.1,
    weight_decay: float = 0.05, warmup_fraction: float = 0.1, label_smoothing: float = 0.1, seed: int = 0,
    min_steps: int = 0, multilabel: bool = False,
) -> dict:
    """Fine-tune a copy of ``visual`` on ``train`` (uint8 image, label) pairs; top-1 on ``test``.
    A small ``train`` gets more epochs, up to ``min_steps`` optimizer steps, and a batch no
    larger than itself. ``multilabel``: the labels are 0/1 rows of ``num_classes``, trained by
    per-class binary cross-entropy (no smoothing) and scored by mAP (``map``, ``ap_per_class``)."""
    torch.manual_seed(seed)
    device = next(visual.parameters()).device
    model = FineTuneClassifier(visual, num_classes, drop_path).to(device).train()
    optimizer = torch.optim.AdamW(layer_decay_groups(model, weight_decay, layer_decay), lr=lr)
    loader = DataLoader(train, batch_size=min(batch_size, len(train)), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    epochs = max(epochs, math.ceil(min_steps / len(loader)))
    total = epochs * len(loader)
    warmup = max(1, int(warmup_fraction * total))
    step = 0
    for _ in range(epochs):
        for images, labels in loader:
            factor = lr_factor(step, warmup, total, min_ratio=0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr * factor * group["lr_scale"]
            images = to_float(images.to(device))
            flip = torch.rand(images.shape[0], device=device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(model(images), labels.to(device).float())
            else:
                loss = F.cross_entropy(model(images), labels.to(device), label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for images, labels in DataLoader(test, batch_size=256):
            logits.append(model(to_float(images.to(device))).float().cpu())
            targets.append(labels)
    logits, targets = torch.cat(logits), torch.cat(targets)
    if multilabel:
        mean_ap, per_class = mean_average_precision(logits, targets)
        scores: dict[str, Any] = {"map": mean_ap, "ap_per_class": per_class}
    else:
        scores = {"top1": accuracy(logits, targets)}
    return {**scores, "steps": total, "epochs": epochs, "final_loss": float(loss.detach())}


@task("finetune", headline="top1")
def finetune_task(ctx: EvalContext) -> dict[str, Any]:
    """Whole encoder + linear head with layer-wise lr decay, on a seeded train subset."""
    cfg, data = ctx.cfg, ctx.classification
    if data.train is None:
        raise DataError(f"{data.name} has no train split, which fine-tuning trains on")
    train = Subset(data.train, seeded_subset(len(data.train), cfg.finetune_train_size, cfg.seed))
    settings = {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr, "layer_decay": cfg.finetune_layer_decay,
                "drop_path": cfg.finetune_drop_path, "min_steps": cfg.finetune_min_steps}
    result = finetune(ctx.model.visual, train, data.test, len(data.classnames), seed=cfg.seed, **settings)
    return {"metrics": {"top1": result["top1"]}, "details": {**settings, "steps": result["steps"], "epochs_run": result["epochs"]},
            "split_sizes": {"train": len(train), "test": len(data.test)}}


def scene_images(scenes: Dataset, batch_size: int = 256) -> torch.Tensor:
    """Every scene's uint8 image (n, 3, H, W)."""
    return torch.cat([batch["image"] for batch in DataLoader(scenes, batch_size=batch_size, collate_fn=collate_scenes)])


class PresenceScenes(Dataset):
    """Scenes as (uint8 image, 0/1 garment presence) pairs, rendered once and held in memory."""

    def __init__(self, scenes: Dataset, batch_size: int = 256) -> None:
        images, targets = [], []
        for batch in DataLoader(scenes, batch_size=batch_size, collate_fn=collate_scenes):
            images.append(batch["image"])
            for labels in batch["labels"]:
                targets.append(torch.zeros(NUM_GARMENTS).index_fill_(0, torch.as_tensor(labels, dtype=torch.long), 1.0))
        self.images, self.targets = torch.cat(images), torch.stack(targets)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]


def fraction_key(fraction: float) -> str:
    """The metric key of a labelled fraction: 0.01 -> ``map_1pct``, 0.005 -> ``map_0_5pct``."""
    return f"map_{100 * fraction:g}pct".replace(".", "_")


@task("finetune_lowshot", headline="map", dataset="fashion-scenes")
def finetune_lowshot_task(ctx: EvalContext) -> dict[str, Any]:
    """Whole encoder + linear head fine-tuned on garment presence from each fraction of a pool of
    labelled train scenes (nested seeded subsets), scored by mAP on the test scenes; the
    headline ``map`` is the smallest fraction's."""
    cfg = ctx.cfg
    pool = ctx.scenes("train", length=cfg.finetune_lowshot_scenes)
    test = ctx.cache.remember(f"presence-scenes|test|{cfg.scene_test_size}", lambda: PresenceScenes(ctx.scenes("test"), cfg.batch_size))
    settings = {"steps": cfg.finetune_lowshot_steps, "batch_size": cfg.finetune_lowshot_batch_size, "lr": cfg.finetune_lr,
                "layer_decay": cfg.finetune_layer_decay, "drop_path": cfg.finetune_drop_path}
    metrics: dict[str, float] = {}
    runs, sizes = {}, {"test": len(test), "pool": len(pool)}
    for fraction in sorted(set(cfg.finetune_lowshot_fractions)):
        rows = seeded_subset(len(pool), max(1, round(fraction * len(pool))), cfg.seed)  # nested: one seeded order
        result = finetune(ctx.model.visual, PresenceScenes(Subset(pool, rows), cfg.batch_size), test, NUM_GARMENTS, epochs=1,
                          min_steps=settings["steps"], batch_size=settings["batch_size"], lr=settings["lr"],
                          layer_decay=settings["layer_decay"], drop_path=settings["drop_path"], seed=cfg.seed, multilabel=True)
        key = fraction_key(fraction)
        metrics.setdefault("map", result["map"])
        metrics[key] = result["map"]
        runs[key] = {"fraction": fraction, "train": len(rows), "steps": result["steps"], "epochs": result["epochs"],
                     "final_loss": result["final_loss"], "ap_per_class": dict(zip(CLASS_NAMES, result["ap_per_class"]))}
        sizes[f"train_{key[4:]}"] = len(rows)
    return {"metrics": metrics, "details": {**settings, "runs": runs}, "split_sizes": sizes}
