"""Linear probes of frozen features: L-BFGS logistic regression with a weight-decay sweep (the
default), or MAE's linear probe (``eval.linear_probe=mae``).

The L-BFGS probe follows CLIP_benchmark `linear_probe.py` / dinov2 `log_regression.py`: the weight
decay is chosen on a validation split carved from train (never the test split), then the
classifier is refit on all train rows and scored once on test.

MAE's probe (``main_linprobe.py``, ``util/lars.py``) is a BatchNorm without affine parameters
(eps 1e-6) then a linear layer (weights trunc_normal std 0.01, bias 0), trained by LARS (trust
ratio on the weight matrix only, momentum 0.9, no weight decay) at lr = blr x batch / 256 per
step, 10 warm-up epochs then a half-cycle cosine to 0, cross-entropy, no sweep. It is trained
here on the cached features of the centre crops, not on RandomResizedCrop + flip views.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langmim.eval.metrics import topk_accuracy

from ..config import EvalConfig, FinetuneConfig
from ..finetune.schedule import lr_at
from .features import POOLS
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext

DEFAULT_WEIGHT_DECAYS = tuple(10.0**e for e in range(-6, 2))  # 1e-6 ... 1e1, 8 values


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return topk_accuracy(logits, labels, ks=(1,))[1]


def fit_logistic_regression(
    features: Tensor, labels: Tensor, weight_decay: float, num_classes: int, max_iter: int = 200
) -> nn.Linear:
    """Logistic regression fit by full-batch L-BFGS (strong-Wolfe line search).

    ``labels`` (n,) int64 fits a multinomial model (cross-entropy); ``labels`` (n, C) of 0/1
    fits C independent binary ones (multi-label, binary cross-entropy). Minimises the mean loss
    + weight_decay / 2 * ||W||^2 (the bias is not decayed), from a zero start so the result is
    deterministic. Expects standardised features.
    """
    features = features.float()
    multilabel = labels.ndim == 2
    labels = labels.to(features.device).float() if multilabel else labels.to(features.device)
    loss_fn = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    head = nn.Linear(features.shape[1], num_classes).to(features.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        penalty = 0.5 * weight_decay * head.weight.square().sum()
        loss = loss_fn(head(features), labels) + penalty
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


def mean_average_precision(scores: Tensor, targets: Tensor) -> tuple[float, list[float | None]]:
    """Multi-label mAP (percent) over the classes with at least one positive, and the AP per
    class (None where a class has no positive), by torchmetrics' average precision."""
    from torchmetrics.functional.classification import multilabel_average_precision

    targets = targets.long().cpu()
    per_class = multilabel_average_precision(scores.float().cpu(), targets, num_labels=targets.shape[1], average=None)
    ap = [100.0 * float(v) if targets[:, c].any() else None for c, v in enumerate(per_class)]
    present = [v for v in ap if v is not None]
    return (sum(present) / len(present) if present else float("nan")), ap


def probe_score(logits: Tensor, targets: Tensor) -> float:
    """Top-1 (percent) for class labels, mAP (percent) for multi-label 0/1 targets."""
    return mean_average_precision(logits, targets)[0] if targets.ndim == 2 else accuracy(logits, targets)


@dataclass
class LinearProbe:
    """A logistic-regression head fit on standardised frozen features, with its sweep."""

    head: nn.Linear
    mean: Tensor
    std: Tensor
    best_weight_decay: float
    val_score: float
    sweep: dict[float, float]
    n_train: int
    n_val: int

    def __call__(self, features: Tensor) -> Tensor:
        return self.head((features.float().to(self.mean.device) - self.mean) / self.std)


def fit_linear_probe(
    train_features: Tensor,
    train_targets: Tensor,
    weight_decays: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
    num_outputs: int | None = None,
) -> LinearProbe:
    """Sweep weight decay on a seeded validation split of train, then refit on all train rows.

    The validation rows are a random `val_fraction` of train drawn with `seed` (disjoint from
    the rows fit during the sweep); ties in the validation score go to the larger weight decay.
    Targets are class labels (n,) or multi-label 0/1 (n, C), scored by top-1 or mAP.
    """
    weight_decays = DEFAULT_WEIGHT_DECAYS if weight_decays is None else tuple(weight_decays)
    device = train_features.device
    train_targets = train_targets.to(device)
    if num_outputs is None:
        num_outputs = train_targets.shape[1] if train_targets.ndim == 2 else int(train_targets.max()) + 1
    fit_idx, val_idx = train_val_split(train_features.shape[0], val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)

    fit_x, val_x = standardize(train_features[fit_idx], train_features[val_idx])
    sweep = {}
    for wd in weight_decays:
        head = fit_logistic_regression(fit_x, train_targets[fit_idx], wd, num_outputs, max_iter)
        sweep[wd] = probe_score(head(val_x), train_targets[val_idx])
    best_wd = max(sweep, key=lambda wd: (sweep[wd], wd))

    mean, std = train_features.float().mean(dim=0), train_features.float().std(dim=0).clamp_min(1e-6)
    head = fit_logistic_regression((train_features.float() - mean) / std, train_targets, best_wd, num_outputs, max_iter)
    return LinearProbe(head, mean, std, best_wd, sweep[best_wd], sweep, fit_idx.numel(), val_idx.numel())


def linear_probe(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
    weight_decays: Sequence[float] | None = None, **fit_options: Any,
) -> dict:
    """`fit_linear_probe` on train (``fit_options``: its ``val_fraction``, ``seed``, ``max_iter``),
    scored once on test.

    Returns top-1 (or mAP for multi-label targets) on test, the chosen weight decay, its
    validation score, the whole sweep and the disjoint split sizes (n_train + n_val = train
    rows; scores in percent).
    """
    multilabel = train_labels.ndim == 2
    num_outputs = train_labels.shape[1] if multilabel else int(max(train_labels.max(), test_labels.max())) + 1
    probe = fit_linear_probe(train_features, train_labels, weight_decays, num_outputs=num_outputs, **fit_options)
    return {
        "top1": probe_score(probe(test_features), test_labels.to(train_features.device)),
        "best_weight_decay": probe.best_weight_decay,
        "val_top1": probe.val_score,
        "sweep": probe.sweep,
        "n_train": probe.n_train,
        "n_val": probe.n_val,
        "n_test": test_features.shape[0],
    }


MAE_TRUST_COEFFICIENT = 0.001  # util/lars.py (MoCo v3's)
MAE_MOMENTUM = 0.9


def mae_lars(head: nn.Module, lr: float) -> torch.optim.Optimizer:
    """MAE's LARS (``util/lars.py``) as timm's ``Lars``: each parameter of more than one dimension
    steps by ``trust_coefficient * ||w|| / ||g||`` times its gradient (1 where either norm is 0),
    the others (the bias) by plain SGD; momentum 0.9 on both, no weight decay.

    timm applies the trust ratio per parameter group, to all or none of its parameters, so the
    matrices and the rest go in two groups; with no weight decay and ``eps=0`` its ratio,
    ``trust_coeff * ||w|| / (||g|| + weight_decay * ||w|| + eps)``, is MAE's ``||w|| / ||g + wd w||``
    exactly (they differ only under weight decay, which MAE's probe does not use), and its momentum
    buffer, started at the first gradient, is MAE's, started at 0 before adding it."""
    from timm.optim import Lars

    matrices = [p for p in head.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in head.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": matrices, "always_adapt": True}, {"params": rest, "always_adapt": False}]
    return Lars([g for g in groups if g["params"]], lr=lr, momentum=MAE_MOMENTUM, weight_decay=0.0,
                trust_coeff=MAE_TRUST_COEFFICIENT, eps=0.0)


def mae_probe_head(dim: int, num_classes: int, generator: torch.Generator | None = None) -> nn.Sequential:
    """``BatchNorm1d(dim, affine=False, eps=1e-6)`` then ``Linear(dim, num_classes)``, the weights
    trunc_normal with std 0.01 and the bias 0 (``main_linprobe.py``'s head, after MoCo v3)."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


@dataclass
class MAEProbe:
    """MAE's probe head fit on frozen features, in eval mode (its BatchNorm reads the running
    statistics), with the recipe it ran."""

    head: nn.Sequential
    recipe: dict[str, Any]

    def __call__(self, features: Tensor) -> Tensor:
        device = self.head[1].weight.device
        with torch.no_grad():
            return self.head(features.float().to(device))

    def details(self) -> dict[str, Any]:
        return {"probe": "mae", **self.recipe}


def fit_mae_probe(
    features: Tensor, labels: Tensor, num_classes: int | None = None, epochs: int = 90, warmup_epochs: float = 10.0,
    batch_size: int = 16384, blr: float = 0.1, seed: int = 0,
) -> MAEProbe:
    """MAE's linear probe trained on ``features`` (n, d) and class ``labels`` (n,).

    The batch is ``batch_size`` capped at n; each epoch visits a seeded permutation of the rows in
    full batches (the last partial one dropped, as MAE's loader does), and optimizer step k reads
    the lr at epoch k / steps_per_epoch (``langmim.finetune.schedule.lr_at``: MAE's ``lr_sched``,
    min_lr 0). The initialisation and the order come from ``seed`` alone: one seed, one head.
    """
    features = features.float()
    device = features.device
    labels = labels.to(device)
    n = features.shape[0]
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    batch = min(batch_size, n)
    steps_per_epoch = n // batch
    schedule = FinetuneConfig(epochs=epochs, warmup_epochs=warmup_epochs, batch_size=batch, blr=blr, lr=None, min_lr=0.0)
    generator = torch.Generator().manual_seed(seed)
    head = mae_probe_head(features.shape[1], num_classes, generator).to(device).train()
    optimizer = mae_lars(head, lr=0.0)
    step = 0
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for k in range(steps_per_epoch):
                rows = order[k * batch:(k + 1) * batch]
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, steps_per_epoch, schedule)
                loss = F.cross_entropy(head(features[rows]), labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
    recipe = {"epochs": epochs, "warmup_epochs": warmup_epochs, "batch_size": batch, "blr": blr,
              "lr": blr * batch / 256, "steps": step, "n_train": n, "final_train_loss": float(loss.detach())}
    return MAEProbe(head.eval().requires_grad_(False), recipe)


def fit_configured_probe(features: Tensor, labels: Tensor, cfg: EvalConfig, num_classes: int) -> LinearProbe | MAEProbe:
    """The probe ``eval.linear_probe`` names, fit on ``features``: ``lbfgs`` (the swept logistic
    regression) or ``mae`` (MAE's probe with the ``eval.mae_probe_*`` recipe)."""
    if cfg.linear_probe == "mae":
        return fit_mae_probe(features, labels, num_classes, cfg.mae_probe_epochs, cfg.mae_probe_warmup_epochs,
                             cfg.mae_probe_batch_size, cfg.mae_probe_blr, cfg.seed)
    return fit_linear_probe(features, labels, seed=cfg.seed, num_outputs=num_classes)


def classification_probe_details(probe: LinearProbe | MAEProbe) -> dict[str, Any]:
    """What a probe records beside its score: the sweep of the L-BFGS one, the recipe of MAE's."""
    if isinstance(probe, MAEProbe):
        return probe.details()
    return {"probe": "lbfgs", "best_weight_decay": probe.best_weight_decay, "val_top1": probe.val_score,
            "sweep": {str(k): v for k, v in probe.sweep.items()}, "n_train": probe.n_train, "n_val": probe.n_val}


def shared_probe(ctx: EvalContext, pool: str) -> LinearProbe | MAEProbe:
    """The classification linear probe (``eval.linear_probe``) on ``pool`` features, fit once per
    evaluation and shared by the tasks that read it (linear, shift)."""
    def fit() -> LinearProbe | MAEProbe:
        train = ctx.classification_features("train")
        return fit_configured_probe(train[pool], train["labels"], ctx.cfg, len(ctx.classification.classnames))
    return ctx.cache.remember(f"linear-probe|{ctx.cfg.linear_probe}|{pool}", fit)


@task("linear", headline="top1")
def linear_task(ctx: EvalContext) -> dict[str, Any]:
    """The probe of each pool; "top1" is the patch mean's."""
    test = ctx.classification_features("test")
    metrics, details = {}, {}
    for pool in POOLS:
        probe = shared_probe(ctx, pool)
        metrics[f"{pool}_top1"] = accuracy(probe(test[pool]), test["labels"])
        details[pool] = {**classification_probe_details(probe), "n_test": len(test["labels"])}
    metrics["top1"] = metrics["mean_top1"]
    return {"metrics": metrics, "details": details, "split_sizes": ctx.classification_sizes()}
