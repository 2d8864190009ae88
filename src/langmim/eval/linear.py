"""Linear probe of frozen features: L-BFGS logistic regression with a weight-decay sweep.

Follows CLIP_benchmark `linear_probe.py` / dinov2 `log_regression.py`: the weight decay is
chosen on a validation split carved from train (never the test split), then the classifier is
refit on all train rows and scored once on test.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langmim.eval.metrics import topk_accuracy

DEFAULT_WEIGHT_DECAYS = tuple(10.0**e for e in range(-6, 2))  # 1e-6 ... 1e1, 8 values


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return topk_accuracy(logits, labels, ks=(1,))[1]


def fit_logistic_regression(
    features: Tensor, labels: Tensor, weight_decay: float, num_classes: int, max_iter: int = 200
) -> nn.Linear:
    """Multinomial logistic regression fit by full-batch L-BFGS (strong-Wolfe line search).

    Minimises mean cross-entropy + weight_decay / 2 * ||W||^2 (the bias is not decayed), from
    a zero start so the result is deterministic. Expects standardised features.
    """
    features = features.float()
    labels = labels.to(features.device)
    head = nn.Linear(features.shape[1], num_classes).to(features.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        penalty = 0.5 * weight_decay * head.weight.square().sum()
        loss = F.cross_entropy(head(features), labels) + penalty
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return head.requires_grad_(False)


def train_val_split(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint (fit, val) row indices of a train set of `n` rows, fixed by `seed`.

    The validation part holds round(val_fraction * n) rows, at least one, and leaves at
    least one row to fit on.
    """
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def standardize(fit: Tensor, *others: Tensor) -> list[Tensor]:
    """Scale every tensor by the per-dimension mean/std of `fit` alone (no leak from others)."""
    fit = fit.float()
    mean = fit.mean(dim=0)
    std = fit.std(dim=0).clamp_min(1e-6)
    return [(x.float().to(fit.device) - mean) / std for x in (fit, *others)]


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    weight_decays: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> dict:
    """Sweep weight decay on a seeded validation split of train, refit on all train, score test.

    The validation rows are a random `val_fraction` of train drawn with `seed` (disjoint from
    the rows fit during the sweep); ties in validation accuracy go to the larger weight decay.
    Returns top-1 on test, the chosen weight decay, its validation top-1, the whole sweep and
    the disjoint split sizes (n_train + n_val = train rows; accuracies in percent).
    """
    weight_decays = DEFAULT_WEIGHT_DECAYS if weight_decays is None else tuple(weight_decays)
    device = train_features.device
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit_idx, val_idx = train_val_split(train_features.shape[0], val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)

    fit_x, val_x = standardize(train_features[fit_idx], train_features[val_idx])
    sweep = {}
    for wd in weight_decays:
        head = fit_logistic_regression(fit_x, train_labels[fit_idx], wd, num_classes, max_iter)
        sweep[wd] = accuracy(head(val_x), train_labels[val_idx])
    best_wd = max(sweep, key=lambda wd: (sweep[wd], wd))

    train_x, test_x = standardize(train_features, test_features)
    head = fit_logistic_regression(train_x, train_labels, best_wd, num_classes, max_iter)
    return {
        "top1": accuracy(head(test_x), test_labels),
        "best_weight_decay": best_wd,
        "val_top1": sweep[best_wd],
        "sweep": sweep,
        "n_train": fit_idx.numel(),
        "n_val": val_idx.numel(),
        "n_test": test_features.shape[0],
    }
