"""Weighted k-NN classification of frozen features (dinov2 `eval/knn.py` protocol)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from langmim.eval.metrics import topk_accuracy

from .features import POOLS
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-1 accuracy (percent) of a cosine k-NN vote, as `{"top1_k{k}": acc}` per k.

    Each of the k nearest train rows (cosine similarity of L2-normalised features) votes for
    its label with weight exp(sim / temperature). A k above the train set size is clipped to
    it. Test rows are processed `chunk_size` at a time so memory stays bounded; the work runs
    on the device of `train_features`.
    """
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.to(device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    clipped = {k: min(k, train.shape[0]) for k in ks}
    max_k = max(clipped.values())
    n_correct = dict.fromkeys(ks, 0.0)
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].to(device).float(), dim=1)
        targets = test_labels[start : start + chunk_size].to(device)
        sims, idx = (queries @ train.T).topk(max_k, dim=1)
        # exp(sim / T) scaled by exp(-best sim / T): same vote, no overflow for small T
        weights = ((sims - sims[:, :1]) / temperature).exp()
        neighbour_labels = train_labels[idx]
        for k, kk in clipped.items():
            votes = torch.zeros(queries.shape[0], num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            n_correct[k] += topk_accuracy(votes, targets, ks=(1,))[1] * queries.shape[0]
    return {f"top1_k{k}": n_correct[k] / test_features.shape[0] for k in ks}


@task("knn", headline="top1")
def knn_task(ctx: EvalContext) -> dict[str, Any]:
    """Both pools; "top1" is the patch mean's at k=20 (or the first k configured)."""
    test, train, cfg = ctx.classification_features("test"), ctx.classification_features("train"), ctx.cfg
    metrics = {}
    for pool in POOLS:
        scores = knn_classify(train[pool], train["labels"], test[pool], test["labels"], ks=cfg.knn_k, num_classes=len(ctx.classification.classnames))
        metrics.update({f"{pool}_{k}": v for k, v in scores.items()})
    metrics["top1"] = metrics[f"mean_top1_k{20 if 20 in cfg.knn_k else cfg.knn_k[0]}"]
    return {"metrics": metrics, "details": {"temperature": 0.07}, "split_sizes": ctx.classification_sizes()}
