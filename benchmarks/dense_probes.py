"""The dense probes (detection, segmentation) measured on a floor and a ceiling: variants of the
probe (token grid, head, training length, class weighting) on the frozen tokens of a random-init
encoder and of encoders that certainly know where each garment is (the supervised method), so a
probe that cannot tell them apart shows up as a blind probe, not as a weak encoder.

    python benchmarks/dense_probes.py --ceiling RUN [--model RUN ...] [--variants NAME,...] [eval.key=value ...]

Every (model, variant) gives one JSON line in benchmarks/results/dense_probes.jsonl with the
metrics, the probe's settings and its seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import date

import torch

from langmim.api import load
from langmim.config import load_config
from langmim.data.fashion_mnist import CLASS_NAMES
from langmim.demo import random_init_model
from langmim.eval.detection import detection_probe
from langmim.eval.segmentation import segmentation_probe
from langmim.eval.suite import EvalContext, item_lists
from results_log import append_result

# name: (task, refine, probe keyword arguments)
VARIANTS: dict[str, tuple[str, int, dict]] = {
    "segmentation": ("segmentation", 2, {}),
    "seg-60ep": ("segmentation", 2, {"epochs": 60}),
    "seg-balanced": ("segmentation", 2, {"balanced": True}),
    "seg-conv3": ("segmentation", 2, {"kernel": 3}),
    "seg-conv3-balanced": ("segmentation", 2, {"kernel": 3, "balanced": True}),
    "seg-refine1": ("segmentation", 1, {}),
    "seg-refine4": ("segmentation", 4, {}),
    "detection": ("detection", 2, {}),
    "det-90ep": ("detection", 2, {"epochs": 90}),
    "det-hidden256": ("detection", 2, {"hidden": 256}),
    "det-refine1": ("detection", 1, {}),
    "det-refine4": ("detection", 4, {}),
}


def run_variant(ctx: EvalContext, task: str, options: dict) -> dict:
    train, test = ctx.scene_features("train"), ctx.scene_features("test")
    if task == "segmentation":
        scores = segmentation_probe(train["dense"], train["mask"], test["dense"], test["mask"], num_classes=1 + len(CLASS_NAMES),
                                    seed=ctx.cfg.seed, **{"epochs": ctx.cfg.segmentation_epochs, **options})
        return {k: scores[k] for k in ("miou", "foreground_miou", "pixel_accuracy", "item_iou", "garment_accuracy_on_items")}
    scores = detection_probe(train["dense"], *item_lists(train), test["dense"], *item_lists(test), image_size=ctx.canvas,
                             num_classes=len(CLASS_NAMES), seed=ctx.cfg.seed, **{"epochs": ctx.cfg.detection_epochs, **options})
    return {k: scores[k] for k in ("ap", "ap50", "ap75")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="RUN", help="a run directory or checkpoint (repeatable)")
    parser.add_argument("--random-init", action="store_true", help="also the demo-sized random-init encoder (the floor)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("overrides", nargs="*", help="eval.* overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("demo", args.overrides)
    models = [(run, lambda run=run: load(run)) for run in args.model]
    if args.random_init:
        models.insert(0, ("random-init", lambda: random_init_model(cfg)))
    for name, build in models:
        model = build()
        contexts: dict[int, EvalContext] = {}
        for variant in args.variants.split(","):
            task, refine, options = VARIANTS[variant]
            ctx = contexts.setdefault(refine, EvalContext(model, dataclasses.replace(cfg.eval, dense_refine=refine), data_root=cfg.data.root))
            start = time.perf_counter()
            metrics = run_variant(ctx, task, options)
            record = {"date": date.today().isoformat(), "model": name, "step": getattr(model, "step", None), "variant": variant,
                      "task": task, "refine": refine, "options": options, "seconds": round(time.perf_counter() - start, 1),
                      "metrics": {k: round(v, 2) for k, v in metrics.items()}}
            append_result("dense_probes", record)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
