"""Classification metrics shared by the evaluation protocols (k-NN, linear probe, zero-shot)."""

from collections.abc import Sequence

import torch
from torch import Tensor


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Percent of rows whose label is among the k highest logits, for each k.

    A k above the number of classes is clipped to it, so every row hits (CLIP_benchmark clips
    its top-5 the same way).
    """
    max_k = min(max(ks), logits.shape[1])
    hits = logits.topk(max_k, dim=1).indices == labels.to(logits.device)[:, None]
    return {k: 100.0 * hits[:, : min(k, max_k)].any(dim=1).double().mean().item() for k in ks}


def mean_per_class_recall(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Recall averaged over the classes present in `labels`, in percent.

    Classes with no true sample are left out, as in sklearn's `balanced_accuracy_score`
    (CLIP_benchmark's "mean_per_class_recall").
    """
    labels = labels.to(pred.device)
    support = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[pred == labels], minlength=num_classes)
    present = support > 0
    return 100.0 * (correct[present].double() / support[present]).mean().item()


def compositional_accuracy(true_scores: Tensor, negative_scores: list[Tensor]) -> tuple[float, float]:
    """(accuracy %, chance %) of n pairs: true_scores (n,) and per pair a (k_i,) tensor, k_i >= 1, of
    negative scores; a pair is solved when its true score beats every negative strictly, and a
    random ranking solves it with probability 1 / (1 + k_i)."""
    if len(true_scores) != len(negative_scores) or not len(negative_scores) or any(len(s) == 0 for s in negative_scores):
        raise ValueError("compositional_accuracy needs at least one pair and one non-empty tensor of negative scores per true score")
    solved = [bool((t > s).all()) for t, s in zip(true_scores, negative_scores)]
    chance = [100.0 / (1 + len(s)) for s in negative_scores]
    return 100.0 * sum(solved) / len(solved), sum(chance) / len(chance)
