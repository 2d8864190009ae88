"""Frozen features of an image data set: pooled encoder tokens and joint-space embeddings."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..interface import LoadedModel
from ..transforms import to_float
from .inference import evaluating

POOLS = ("mean", "cls")  # the pooled features probes read: the headline patch-token mean, and the CLS token


@torch.no_grad()
def extract_features(model: LoadedModel, dataset: Dataset, batch_size: int = 256, num_workers: int = 0) -> dict[str, torch.Tensor]:
    """Run the encoder in eval mode over ``dataset`` of (uint8 image, label) pairs.

    Returns ``mean`` (patch-token mean, RILS's pooling and the headline probe feature),
    ``cls`` (the CLS token, MAE's), ``embed`` (the normalised image embedding used for
    zero-shot) and ``labels``.
    """
    out: dict[str, list[torch.Tensor]] = {"mean": [], "cls": [], "embed": [], "labels": []}
    with evaluating(model) as device:
        for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            tokens = model.visual.forward_features(to_float(images.to(device)))
            out["mean"].append(model.visual.pool(tokens, "mean").float().cpu())
            out["cls"].append(model.visual.pool(tokens, "cls").float().cpu())
            out["embed"].append(torch.nn.functional.normalize(model.image_embedding(tokens).float(), dim=-1).cpu())
            out["labels"].append(labels)
    return {k: torch.cat(v) for k, v in out.items()}
