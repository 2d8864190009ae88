"""End-to-end fine-tuning as an evaluation task: the whole encoder plus a linear head, a small
version of ``langmim finetune`` (whose classifier and layer-decay groups it shares).

A copy of the vision tower is trained with a linear head on the pooled patch tokens, AdamW with
layer-wise lr decay (layer ``i`` of ``L`` gets ``decay ** (L + 1 - i)`` of the head's lr),
stochastic depth rising linearly over the blocks, label smoothing, and a linear warm-up then
cosine schedule. The checkpoint's own weights are never touched.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.eval_rows import seeded_subset
from ..engine.optim import lr_factor
from ..errors import DataError
from ..finetune.model import FineTuneClassifier, layer_decay_groups
from ..models.vit import MaskedVisionTransformer
from ..transforms import to_float
from .linear import accuracy
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext


def finetune(
    visual: MaskedVisionTransformer, train: Dataset, test: Dataset, num_classes: int, *, epochs: int = 3,
    batch_size: int = 128, lr: float = 1e-3, layer_decay: float = 0.75, drop_path: float = 0.1,
    weight_decay: float = 0.05, warmup_fraction: float = 0.1, label_smoothing: float = 0.1, seed: int = 0,
    min_steps: int = 0,
) -> dict:
    """Fine-tune a copy of ``visual`` on ``train`` (uint8 image, label) pairs; top-1 on ``test``.
    A small ``train`` gets more epochs, up to ``min_steps`` optimizer steps, and a batch no
    larger than itself."""
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
    return {"top1": accuracy(torch.cat(logits), torch.cat(targets)), "steps": total, "epochs": epochs,
            "final_loss": float(loss.detach())}


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
