"""The evaluation suite: every task on its built-in data set, one CLIP_benchmark-style JSON
per (model, task, data set).

- zeroshot, knn, linear, fewshot: Fashion-MNIST test images rendered as centred scenes (the
  probes fit on a seeded subset of the train images);
- retrieval: held-out captioned scenes of test-split items;
- segmentation: a linear head on patch tokens, trained on scenes of train-split items and scored
  on scenes of test-split items.
Tasks that need a text tower (zeroshot, retrieval) are skipped with a note for MAE and MILAN.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import EvalConfig, to_dict
from ..data.fashion_mnist import CLASS_NAMES
from ..data.scenes import ZEROSHOT_TEMPLATES, FashionMNISTCentred, FashionScenes, collate_scenes, fill_template, to_float
from ..methods.base import PretrainMethod
from .features import extract_features
from .fewshot import fewshot_evaluate
from .knn import knn_classify
from .linear import linear_probe
from .retrieval import recall_at_k, relevance_from_captions
from .segmentation import segmentation_probe
from .zeroshot import zeroshot_classifier, zeroshot_scores

TASKS = ("zeroshot", "knn", "linear", "fewshot", "retrieval", "segmentation")
CLASSIFICATION_TASKS = ("zeroshot", "knn", "linear", "fewshot")
TEXT_TASKS = ("zeroshot", "retrieval")
DATASETS = {
    **dict.fromkeys(CLASSIFICATION_TASKS, "fashion-mnist"),
    "retrieval": "fashion-scenes-captions",
    "segmentation": "fashion-scenes-masks",
}
EVAL_SCENE_SEED = 1  # held-out scenes are drawn from test-split items with their own seed


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


def fewshot_task(_model: PretrainMethod, feats: dict, train: dict, cfg: EvalConfig) -> dict[str, Any]:
    """Prototype and logistic classifiers on n shots per class of the probe's train subset."""
    shots = {pool: fewshot_evaluate(train[pool], train["labels"], feats[pool], feats["labels"],
                                    shots=cfg.fewshot_shots, seeds=range(cfg.fewshot_seeds))
             for pool in ("mean", "cls")}
    metrics = {f"{pool}_{name}_{n}shot": r[name]["mean"]
               for pool, by_n in shots.items() for n, r in by_n.items() for name in r}
    metrics["top1"] = metrics[f"mean_logistic_{max(cfg.fewshot_shots)}shot"]
    return {"metrics": metrics, "details": shots}


CLASSIFIERS: dict[str, Callable] = {"zeroshot": zeroshot_task, "knn": knn_task, "linear": linear_task, "fewshot": fewshot_task}


@torch.no_grad()
def retrieval_task(model: PretrainMethod, cfg: EvalConfig, data_root: str | None) -> dict[str, Any]:
    """Recall@1/5/10 both ways on held-out captioned scenes (a caption with the same text is a hit)."""
    scenes = FashionScenes("test", model.config.model.img_size, seed=EVAL_SCENE_SEED, length=cfg.retrieval_size, root=data_root)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images, texts, captions = [], [], []
    try:
        for batch in DataLoader(scenes, batch_size=cfg.batch_size, collate_fn=collate_scenes):
            images.append(model.encode_image(to_float(batch["image"].to(device))).float().cpu())
            texts.append(model.encode_text(model.tokenizer(batch["caption"]).to(device)).float().cpu())
            captions += batch["caption"]
    finally:
        model.train(was_training)
    similarity = F.normalize(torch.cat(images), dim=-1) @ F.normalize(torch.cat(texts), dim=-1).T
    metrics = recall_at_k(similarity, relevance_from_captions(captions))
    metrics["top1"] = metrics["image_to_text_R@1"]
    return {"metrics": metrics, "details": {"distinct_captions": len(set(captions))}, "split_sizes": {"test": len(captions)}}


def segmentation_task(model: PretrainMethod, cfg: EvalConfig, data_root: str | None, examples_png: Path | None) -> dict[str, Any]:
    canvas = model.config.model.img_size
    train = FashionScenes("train", canvas, seed=EVAL_SCENE_SEED, length=cfg.segmentation_train_size, root=data_root)
    test = FashionScenes("test", canvas, seed=EVAL_SCENE_SEED, length=cfg.segmentation_test_size, root=data_root)
    scores = segmentation_probe(model, train, test, num_classes=1 + len(CLASS_NAMES), batch_size=cfg.batch_size,
                                epochs=cfg.segmentation_epochs, seed=cfg.seed)
    predictions = scores.pop("example_predictions")
    if examples_png is not None:
        from ..report import plot_segmentation_examples

        plot_segmentation_examples([test[i] for i in range(len(predictions))], predictions, examples_png)
    per_class = scores.pop("per_class_iou")
    metrics = {"miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"], "top1": scores["miou"]}
    return {"metrics": metrics, "details": {"per_class_iou": dict(zip(["background", *CLASS_NAMES], per_class)), "epochs": scores["epochs"]},
            "split_sizes": {"train": scores["n_train"], "test": scores["n_test"]}}


def classification_features(model: PretrainMethod, tasks: list[str], cfg: EvalConfig, data_root: str | None) -> tuple[dict, dict | None]:
    canvas = model.config.model.img_size
    test = extract_features(model, FashionMNISTCentred("test", canvas, np.arange(cfg.test_size), data_root), cfg.batch_size)
    train = None
    if any(t in ("knn", "linear", "fewshot") for t in tasks):
        indices = probe_train_indices(cfg.probe_train_size, cfg.seed)
        train = extract_features(model, FashionMNISTCentred("train", canvas, indices, data_root), cfg.batch_size)
    return test, train


def evaluate(
    model: PretrainMethod, tasks: list[str], cfg: EvalConfig, out_dir: Path | None,
    model_name: str, data_root: str | None = None, log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run ``tasks`` on their built-in data sets; write one JSON per task to ``out_dir``."""
    results = {}
    skipped = [t for t in tasks if t in TEXT_TASKS and not model.has_text]
    for task in skipped:
        log(f"{task} skipped: method '{model.config.method}' has no text tower")
    tasks = [t for t in tasks if t not in skipped]
    test = train = None
    if any(t in CLASSIFICATION_TASKS for t in tasks):
        start = time.perf_counter()
        test, train = classification_features(model, tasks, cfg, data_root)
        log(f"features of {len(test['labels'])} test and {0 if train is None else len(train['labels'])} train images in {time.perf_counter() - start:.1f}s")
    for task in tasks:
        t0 = time.perf_counter()
        if task in CLASSIFIERS:
            result = CLASSIFIERS[task](model, test, train, cfg)
            result["split_sizes"] = {"test": len(test["labels"]), "train": 0 if train is None else len(train["labels"])}
        elif task == "retrieval":
            result = retrieval_task(model, cfg, data_root)
        else:
            png = None if out_dir is None else out_dir / f"{model_name}_segmentation_examples.png"
            if png is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
            result = segmentation_task(model, cfg, data_root, png)
        result.update({
            "dataset": DATASETS[task],
            "model": model_name,
            "task": task,
            "checkpoint": getattr(model, "checkpoint_path", None),
            "step": getattr(model, "step", None),
            "config": to_dict(model.config),
            "seeds": {"eval": cfg.seed, "train": model.config.train.seed},
            "seconds": time.perf_counter() - t0,
        })
        results[task] = result
        log(f"{task}: {result['metrics']['top1']:.2f} ({result['seconds']:.1f}s)")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{model_name}_{task}_{DATASETS[task]}.json").write_text(json.dumps(result, indent=1))
    return results
