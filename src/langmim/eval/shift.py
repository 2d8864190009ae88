"""Robustness to shifted renders: zero-shot (with a text tower) and the linear probe fit on clean
renders, on each style of ``data.shifted`` beside the clean score of the same test items."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.shifted import SHIFT_STYLES, FashionMNISTShifted
from .linear import LinearProbe, accuracy, shared_probe
from .registry import task
from .zeroshot import shared_classifier, zeroshot_scores

if TYPE_CHECKING:
    from .context import EvalContext


@task("shift", headline="shifted_mean", dataset="fashion-mnist-shifted")
def shift_task(ctx: EvalContext) -> dict[str, Any]:
    """Per shifted style of the first ``eval.shift_test_size`` test items: zero-shot (with a text
    tower) and the linear probe fit on clean renders (patch mean), beside the clean score of the
    same items. The headline "shifted_mean" is zero-shot's mean over the styles where the model
    has a text tower, else the linear probe's."""
    rows = range(min(ctx.cfg.shift_test_size, ctx.cfg.test_size))
    clean = ctx.classification_features("test")
    clean = {k: v[: len(rows)] for k, v in clean.items()}
    probe = shared_probe(ctx, "mean")
    zeroshot = shared_classifier(ctx) if ctx.model.has_text else None

    def scores(feats: dict) -> dict[str, float]:
        out = {"linear": accuracy(probe(feats["mean"]), feats["labels"])}
        if zeroshot is not None:
            out["zeroshot"] = zeroshot_scores(feats["embed"], feats["labels"], zeroshot)["top1"]
        return out

    per_style = {"clean": scores(clean)}
    for style in SHIFT_STYLES:
        shifted = FashionMNISTShifted("test", style, ctx.canvas, indices=np.asarray(rows), root=ctx.data_root, seed=ctx.cfg.seed)
        per_style[style] = scores(ctx.image_features(shifted, f"fashion-mnist-{style}|seed{ctx.cfg.seed}"))
    metrics = {f"{kind}_{style}": v for style, by_kind in per_style.items() for kind, v in by_kind.items()}
    for kind in per_style["clean"]:
        metrics[f"{kind}_shifted_mean"] = float(np.mean([per_style[s][kind] for s in SHIFT_STYLES]))
    metrics["shifted_mean"] = metrics["zeroshot_shifted_mean" if zeroshot is not None else "linear_shifted_mean"]
    fit = {"probe_weight_decay": probe.best_weight_decay} if isinstance(probe, LinearProbe) else {"probe": probe.details()}
    return {"metrics": metrics, "details": {"styles": list(SHIFT_STYLES), **fit},
            "split_sizes": {"test_per_style": len(rows), "probe_train": ctx.classification_sizes()["train"]}}
