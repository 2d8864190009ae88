"""Scene probes: what frozen features know about a whole scene, beyond one centred item.

Each probe fits a logistic regression on train-split scenes and is scored on test-split scenes
(1 to 3 items, colours and positions as in pre-training), on the patch-token mean (the headline)
and on the CLS token, fully labelled and low-shot:
- presence: which of the 10 garments are in the scene (multi-label; mAP and AP per class);
- cells: which garment, or nothing, sits in each cell of the 3x3 grid, read from the patch tokens
  pooled over the cell (accuracy over occupied cells, over all cells, and per class);
- binding: the colour of a named garment in a scene of several items, by one colour classifier per
  garment name (a linear map of features x one-hot name): features that only list the colours
  present cannot tell which item wears which;
- counting: how many items (1, 2 or 3).
Low-shot draws n labelled examples per class (scenes containing the garment, for presence) from
the train scenes with several seeds and fits with a fixed weight decay, as few-shot does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.fashion_mnist import CLASS_NAMES
from ..data.scenes import COLOURS
from ..models.vit import MaskedVisionTransformer
from .features import POOLS
from .fewshot import FEWSHOT_WEIGHT_DECAY, fewshot_evaluate
from .linear import LinearProbe, accuracy, fit_linear_probe, fit_logistic_regression, mean_average_precision
from .metrics import mean_per_class_recall
from .registry import task
from .scene_features import cell_pooling_weights

if TYPE_CHECKING:
    from .context import EvalContext
pool_tokens = MaskedVisionTransformer.pool
NUM_GARMENTS = len(CLASS_NAMES)


def presence_targets(labels: Tensor) -> Tensor:
    """(n, MAX_ITEMS) item labels padded with -1 -> (n, 10) 0/1 garment presence."""
    targets = torch.zeros(len(labels), NUM_GARMENTS)
    rows, slots = (labels >= 0).nonzero(as_tuple=True)
    targets[rows, labels[rows, slots]] = 1.0
    return targets


def cell_targets(labels: Tensor, cells: Tensor) -> Tensor:
    """(n, 9) per cell: 0 for nothing, 1 + garment for the item placed in it."""
    targets = torch.zeros(len(labels), 9, dtype=torch.int64)
    rows, slots = (labels >= 0).nonzero(as_tuple=True)
    targets[rows, cells[rows, slots]] = 1 + labels[rows, slots]
    return targets


def binding_queries(features: Tensor, labels: Tensor, colours: Tensor) -> tuple[Tensor, Tensor]:
    """Queries "what colour is the <garment>?" of scenes with 2+ items, one per item whose garment
    is unique in its scene: the scene feature placed in the named garment's block of a
    (n, 10 * D) vector, so a linear classifier holds one colour classifier per garment; and
    the true colour."""
    rows, slots = (labels >= 0).nonzero(as_tuple=True)
    count = (labels >= 0).sum(dim=1)
    same = (labels[rows] == labels[rows, slots][:, None]).sum(dim=1)
    keep = (count[rows] >= 2) & (same == 1)
    rows, slots = rows[keep], slots[keep]
    named = labels[rows, slots]
    queries = features.new_zeros(len(rows), NUM_GARMENTS, features.shape[1])
    queries[torch.arange(len(rows)), named] = features[rows]
    return queries.flatten(1), colours[rows, slots]


def lowshot_multilabel(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, shots: Sequence[int], seeds: Sequence[int]) -> dict:
    """Per n: mAP (mean, std, runs over seeds) of a multi-label logistic regression on
    L2-normalised features, fit on n train scenes containing each garment (their union)."""
    results = {}
    for n in shots:
        runs = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            rows = torch.cat([
                (positives := train_y[:, c].nonzero().flatten())[torch.randperm(len(positives), generator=generator)[:n]]
                for c in range(train_y.shape[1]) if train_y[:, c].any()
            ]).unique()
            head = fit_logistic_regression(F.normalize(train_x[rows].float(), dim=1), train_y[rows], FEWSHOT_WEIGHT_DECAY, train_y.shape[1])
            runs.append(mean_average_precision(head(F.normalize(test_x.float(), dim=1)), test_y)[0])
        runs_t = torch.tensor(runs)
        results[str(n)] = {"logistic": {"mean": float(runs_t.mean()), "std": float(runs_t.std(unbiased=False)), "runs": runs}}
    return results


def lowshot_metrics(lowshot: dict) -> dict[str, float]:
    return {f"lowshot_{n}": r["logistic"]["mean"] for n, r in lowshot.items()}


def probe_details(probe: LinearProbe, lowshot: dict) -> dict:
    return {"best_weight_decay": probe.best_weight_decay, "val_score": probe.val_score, "lowshot": lowshot}


def presence_probe(train: dict, test: dict, shots: Sequence[int], seeds: Sequence[int], seed: int = 0) -> dict:
    """Multi-label garment presence from pooled features: mAP and AP per class (percent)."""
    train_y, test_y = presence_targets(train["labels"]), presence_targets(test["labels"])
    metrics, details = {}, {}
    for pool in POOLS:
        train_x, test_x = pool_tokens(train["tokens"], pool), pool_tokens(test["tokens"], pool)
        probe = fit_linear_probe(train_x, train_y, seed=seed)
        metrics[f"{pool}_map"], per_class = mean_average_precision(probe(test_x), test_y)
        lowshot = lowshot_multilabel(train_x, train_y, test_x, test_y, shots, seeds)
        metrics.update({f"{pool}_{k}": v for k, v in lowshot_metrics(lowshot).items()})
        details[pool] = {**probe_details(probe, lowshot), "ap_per_class": dict(zip(CLASS_NAMES, per_class))}
    chance = 100.0 * test_y.mean(dim=0)  # the AP of a constant score is the share of positives
    details["chance_ap_per_class"] = dict(zip(CLASS_NAMES, chance.tolist()))
    metrics["chance_map"] = float(chance.mean())
    return {"metrics": metrics, "details": details, "split_sizes": {"train": len(train_y), "test": len(test_y)}}


def cell_features(split: dict, cell_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per cell of every scene: the patch tokens pooled with `cell_weights` (9, N), and the
    cell's target (0 nothing, 1 + garment); rows are (scene, cell) pairs."""
    feats = torch.einsum("cn,snd->scd", cell_weights, split["tokens"][:, 1:].float())
    return feats.flatten(0, 1), cell_targets(split["labels"], split["cells"]).flatten()


def cell_probe(train: dict, test: dict, cell_weights: Tensor, shots: Sequence[int], seeds: Sequence[int], seed: int = 0) -> dict:
    """Which garment, or nothing, is in each cell: one 11-way classifier shared by all cells.
    The headline is the accuracy over occupied cells (always answering "nothing" scores 0
    there), low-shot too; the accuracy over all cells is reported beside the share of empty cells."""
    (train_x, train_y), (test_x, test_y) = cell_features(train, cell_weights), cell_features(test, cell_weights)
    probe = fit_linear_probe(train_x, train_y, seed=seed, num_outputs=1 + NUM_GARMENTS)
    pred = probe(test_x).argmax(dim=1)
    occupied = test_y > 0
    lowshot = fewshot_evaluate(train_x, train_y, test_x[occupied], test_y[occupied], shots=shots, seeds=seeds)
    metrics = {
        "occupied_accuracy": 100.0 * float((pred[occupied] == test_y[occupied]).double().mean()),
        "accuracy": 100.0 * float((pred == test_y).double().mean()),
        "mean_per_class_recall": mean_per_class_recall(pred, test_y, 1 + NUM_GARMENTS),
        "empty_share": 100.0 * float((~occupied).double().mean()),
        **lowshot_metrics(lowshot),
    }
    details = {**probe_details(probe, lowshot), "classes": ["nothing", *CLASS_NAMES], "chance_occupied_accuracy": 100.0 / NUM_GARMENTS}
    return {"metrics": metrics, "details": details, "split_sizes": {"train_cells": len(train_y), "test_cells": len(test_y)}}


def pooled_probe(train: dict, test: dict, make: Callable[[Tensor, dict], tuple[Tensor, Tensor]], shots: Sequence[int], seeds: Sequence[int], seed: int) -> dict:
    """Linear and low-shot probes on (features, labels) = make(pooled tokens, split), per pool."""
    metrics, details, sizes = {}, {}, {}
    for pool in POOLS:
        (train_x, train_y), (test_x, test_y) = make(pool_tokens(train["tokens"], pool), train), make(pool_tokens(test["tokens"], pool), test)
        probe = fit_linear_probe(train_x, train_y, seed=seed, num_outputs=int(max(train_y.max(), test_y.max())) + 1)
        lowshot = fewshot_evaluate(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds)
        metrics[f"{pool}_top1"] = accuracy(probe(test_x), test_y)
        metrics.update({f"{pool}_{k}": v for k, v in lowshot_metrics(lowshot).items()})
        details[pool] = probe_details(probe, lowshot)
        sizes = {"train": len(train_y), "test": len(test_y)}
    return {"metrics": metrics, "details": details, "split_sizes": sizes}


def binding_probe(train: dict, test: dict, shots: Sequence[int], seeds: Sequence[int], seed: int = 0) -> dict:
    """The colour of a named garment in scenes of 2-3 items (chance: 1 in 10 colours)."""
    result = pooled_probe(train, test, lambda x, split: binding_queries(x, split["labels"], split["colours"]), shots, seeds, seed)
    result["details"]["chance"] = 100.0 / len(COLOURS)
    return result


def counting_probe(train: dict, test: dict, shots: Sequence[int], seeds: Sequence[int], seed: int = 0) -> dict:
    """How many items a scene holds (1 to 3); chance is the share of the commonest count."""
    result = pooled_probe(train, test, lambda x, split: (x, split["count"] - 1), shots, seeds, seed)
    result["details"]["chance"] = 100.0 * float(torch.bincount(test["count"]).max()) / len(test["count"])
    return result


def probe_args(ctx: EvalContext) -> tuple[dict, dict, list[int], range]:
    """The scene features of both splits, the low-shot sizes and the seeds every scene probe takes."""
    return ctx.scene_features("train"), ctx.scene_features("test"), ctx.cfg.lowshot_shots, range(ctx.cfg.fewshot_seeds)


@task("presence", headline="mean_map", dataset="fashion-scenes")
def presence_task(ctx: EvalContext) -> dict[str, Any]:
    return presence_probe(*probe_args(ctx), seed=ctx.cfg.seed)


@task("cells", headline="occupied_accuracy", dataset="fashion-scenes")
def cells_task(ctx: EvalContext) -> dict[str, Any]:
    train, test, shots, seeds = probe_args(ctx)
    return cell_probe(train, test, cell_pooling_weights(ctx.canvas, ctx.patch_size), shots, seeds, seed=ctx.cfg.seed)


@task("binding", headline="mean_top1", dataset="fashion-scenes")
def binding_task(ctx: EvalContext) -> dict[str, Any]:
    return binding_probe(*probe_args(ctx), seed=ctx.cfg.seed)


@task("counting", headline="mean_top1", dataset="fashion-scenes")
def counting_task(ctx: EvalContext) -> dict[str, Any]:
    return counting_probe(*probe_args(ctx), seed=ctx.cfg.seed)
