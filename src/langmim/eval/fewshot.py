"""Few-shot classification of frozen features: n labelled train images per class, several seeds.

Two classifiers per (n, seed), as dinov2 (``--n-per-class-list``) and CLIP_benchmark
(``--fewshot_k``) report them: a prototype classifier (cosine similarity to each class's mean
L2-normalised feature) and a logistic regression on L2-normalised features with a fixed weight decay (n = 1 leaves
nothing to validate on). The shots come from the train pool only; the test set is never
sampled.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from .features import POOLS
from .linear import accuracy, fit_logistic_regression
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
FEWSHOT_WEIGHT_DECAY = 1e-2


def sample_shots(labels: Tensor, n: int, seed: int) -> Tensor:
    """Indices of exactly ``n`` rows per class of ``labels`` (sorted), drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        rows = (labels == cls).nonzero().flatten()
        if rows.numel() < n:
            raise ValueError(f"few-shot: class {cls} has {rows.numel()} train rows, fewer than n={n}")
        chosen.append(rows[torch.randperm(rows.numel(), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


def prototype_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int) -> float:
    """Top-1 of nearest class mean (cosine) on L2-normalised features."""
    train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    prototypes = torch.zeros(num_classes, train_x.shape[1]).index_add_(0, train_y, train_x)
    return accuracy(test_x @ F.normalize(prototypes, dim=1).T, test_y)


def fewshot_evaluate(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = (0, 1, 2, 3, 4),
    weight_decay: float = FEWSHOT_WEIGHT_DECAY,
) -> dict[str, dict]:
    """Per n: mean and std (over seeds) of top-1 for the prototype and logistic classifiers.
    An n that some class cannot supply (fewer train rows than n) is left out of the result."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    smallest_class = int(torch.unique(train_labels, return_counts=True)[1].min())
    results: dict[str, dict] = {}
    for n in (n for n in shots if n <= smallest_class):
        runs: dict[str, list[float]] = {"prototype": [], "logistic": []}
        for seed in seeds:
            rows = sample_shots(train_labels, n, seed)
            x, y = train_features[rows], train_labels[rows]
            runs["prototype"].append(prototype_accuracy(x, y, test_features, test_labels, num_classes))
            # L2-normalised rather than standardised: per-dimension statistics of n rows are noise.
            head = fit_logistic_regression(F.normalize(x.float(), dim=1), y, weight_decay, num_classes)
            runs["logistic"].append(accuracy(head(F.normalize(test_features.float(), dim=1)), test_labels))
        results[str(n)] = {
            name: {"mean": float(torch.tensor(v).mean()), "std": float(torch.tensor(v).std(unbiased=False)), "runs": v}
            for name, v in runs.items()
        }
    return results


@task("fewshot", headline="top1")
def fewshot_task(ctx: EvalContext) -> dict[str, Any]:
    """Prototype and logistic classifiers on n shots per class of the probe's train subset; "top1"
    is the patch mean's logistic classifier at the most shots."""
    test, train, cfg = ctx.classification_features("test"), ctx.classification_features("train"), ctx.cfg
    shots = {pool: fewshot_evaluate(train[pool], train["labels"], test[pool], test["labels"],
                                    shots=cfg.fewshot_shots, seeds=range(cfg.fewshot_seeds))
             for pool in POOLS}
    if not shots["mean"]:
        raise DataError(f"few-shot: the smallest class has fewer train images than n={min(cfg.fewshot_shots)}")
    metrics = {f"{pool}_{name}_{n}shot": r[name]["mean"]
               for pool, by_n in shots.items() for n, r in by_n.items() for name in r}
    metrics["top1"] = metrics[f"mean_logistic_{max(shots['mean'], key=int)}shot"]
    return {"metrics": metrics, "details": shots, "split_sizes": ctx.classification_sizes()}
