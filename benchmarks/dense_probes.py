"""The dense probes (detection, segmentation) measured on a floor and a ceiling: variants of the
probe (token grid, head, training length, class weighting) on the frozen tokens of a random-init
encoder and of encoders that certainly know where each garment is (the supervised method), so a
probe that cannot tell them apart shows up as a blind probe, not as a weak encoder.

    python benchmarks/dense_probes.py [--random-init] [--model RUN ...] [--variants NAME,...] [eval.key=value ...]

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
from langmim.eval.context import EvalContext
from langmim.eval.detection import detection_probe, item_lists
from langmim.eval.segmentation import segmentation_probe
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
    "own-head": ("own-head", 1, {}),  # a supervised ceiling only: its own patch head on the test scenes
    "detection": ("detection", 2, {}),
    "det-90ep": ("detection", 2, {"epochs": 90}),
    "det-hidden256": ("detection", 2, {"hidden": 256}),
    "det-refine1": ("detection", 1, {}),
    "det-refine4": ("detection", 4, {}),
}


def own_head_accuracy(ctx: EvalContext) -> dict:
    """What a supervised ceiling's own patch head knows: the share of item cells (and of
    background cells) of the test scenes whose garment it names, at its 4x4 cells per patch."""
    from langmim.data.scene_labels import NUM_GARMENTS, SUBCELLS, subcell_labels
    from langmim.transforms import to_float

    scenes = ctx.scenes("test")
    images = torch.stack([scenes[i]["image"] for i in range(len(scenes))])
    masks = torch.stack([scenes[i]["mask"] for i in range(len(scenes))])
    with torch.no_grad():
        patches = ctx.model.visual.forward_features(to_float(images))[:, 1:]
        pred = ctx.model.patch_head(patches).reshape(len(images), patches.shape[1], SUBCELLS**2, 1 + NUM_GARMENTS).argmax(-1)
    labels = subcell_labels(masks, ctx.patch_size)
    items = labels > 0
    return {"item_cell_accuracy": 100.0 * pred[items].eq(labels[items]).float().mean().item(),
            "background_cell_accuracy": 100.0 * pred[~items].eq(0).float().mean().item()}


def run_variant(ctx: EvalContext, task: str, options: dict) -> dict:
    if task == "own-head":
        return own_head_accuracy(ctx)
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
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "own-head"),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
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
            if task == "own-head" and not hasattr(model, "patch_head"):
                print(f"{variant}: {name} is not a supervised ceiling (no patch head); skipped")
                continue
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
