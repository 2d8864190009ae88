"""Image classification tasks on Fashion-MNIST (rendered as centred scenes): zero-shot,
k-NN and linear probe, each written as one CLIP_benchmark-style result JSON."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EvalConfig, to_dict
from ..data.fashion_mnist import CLASS_NAMES
from ..data.scenes import ZEROSHOT_TEMPLATES, FashionMNISTCentred, fill_template
from ..methods.base import PretrainMethod
from .features import extract_features
from .knn import knn_classify
from .linear import linear_probe
from .zeroshot import zeroshot_classifier, zeroshot_scores

DATASET = "fashion-mnist"
CLASSIFICATION_TASKS = ("zeroshot", "knn", "linear")


def probe_train_indices(size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of the 60,000 train images for the probes to fit on."""
    return np.sort(np.random.default_rng([seed, 60000]).permutation(60000)[:size])


def zeroshot_task(model: PretrainMethod, feats: dict, _train: dict | None, cfg: EvalConfig) -> dict[str, Any]:
    classifier = zeroshot_classifier(model, CLASS_NAMES, ZEROSHOT_TEMPLATES, fill=fill_template)
    return {"metrics": zeroshot_scores(feats["embed"], feats["labels"], classifier),
            "details": {"templates": list(ZEROSHOT_TEMPLATES), "classnames": list(CLASS_NAMES)}}


def knn_task(_model: PretrainMethod, feats: dict, train: dict, cfg: EvalConfig) -> dict[str, Any]:
    metrics = {}
    for pool in ("mean", "cls"):
        scores = knn_classify(train[pool], train["labels"], feats[pool], feats["labels"], ks=cfg.knn_k, num_classes=len(CLASS_NAMES))
        metrics.update({f"{pool}_{k}": v for k, v in scores.items()})
    metrics["top1"] = metrics[f"mean_top1_k{20 if 20 in cfg.knn_k else cfg.knn_k[0]}"]
    return {"metrics": metrics, "details": {"temperature": 0.07}}


def linear_task(_model: PretrainMethod, feats: dict, train: dict, cfg: EvalConfig) -> dict[str, Any]:
    metrics, details = {}, {}
    for pool in ("mean", "cls"):
        result = linear_probe(train[pool], train["labels"], feats[pool], feats["labels"], seed=cfg.seed)
        metrics[f"{pool}_top1"] = result["top1"]
        details[pool] = {k: v for k, v in result.items() if k != "top1"}
        details[pool]["sweep"] = {str(k): v for k, v in result["sweep"].items()}
    metrics["top1"] = metrics["mean_top1"]
    return {"metrics": metrics, "details": details}


TASKS: dict[str, Callable] = {"zeroshot": zeroshot_task, "knn": knn_task, "linear": linear_task}


def evaluate_classification(
    model: PretrainMethod, tasks: list[str], cfg: EvalConfig, out_dir: Path | None,
    model_name: str, data_root: str | None = None, log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run ``tasks`` on the Fashion-MNIST test images; write one JSON per task to ``out_dir``."""
    canvas = model.config.model.img_size
    start = time.perf_counter()
    test = extract_features(model, FashionMNISTCentred("test", canvas, np.arange(cfg.test_size), data_root), cfg.batch_size)
    train = None
    if any(t != "zeroshot" for t in tasks):
        indices = probe_train_indices(cfg.probe_train_size, cfg.seed)
        train = extract_features(model, FashionMNISTCentred("train", canvas, indices, data_root), cfg.batch_size)
    log(f"features of {len(test['labels'])} test and {0 if train is None else len(train['labels'])} train images in {time.perf_counter() - start:.1f}s")
    results = {}
    for task in tasks:
        if task == "zeroshot" and not model.has_text:
            log(f"zeroshot skipped: method '{model.config.method}' has no text tower")
            continue
        t0 = time.perf_counter()
        result = TASKS[task](model, test, train, cfg)
        result.update({
            "dataset": DATASET,
            "model": model_name,
            "task": task,
            "checkpoint": getattr(model, "checkpoint_path", None),
            "step": getattr(model, "step", None),
            "config": to_dict(model.config),
            "seeds": {"eval": cfg.seed, "train": model.config.train.seed},
            "split_sizes": {"test": len(test["labels"]), "train": 0 if train is None else len(train["labels"])},
            "seconds": time.perf_counter() - t0,
        })
        results[task] = result
        log(f"{task}: top1 {result['metrics']['top1']:.2f}% ({result['seconds']:.1f}s)")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{model_name}_{task}_{DATASET}.json").write_text(json.dumps(result, indent=1))
    return results
