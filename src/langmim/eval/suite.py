"""The evaluation suite: every task on its built-in data set, one CLIP_benchmark-style JSON
per (model, task, data set).

- zeroshot, knn, linear, fewshot, finetune: Fashion-MNIST test images rendered as centred
  scenes (probes and fine-tuning fit on seeded subsets of the train images);
- retrieval: held-out captioned scenes of test-split items;
- segmentation: a linear head on patch tokens, trained on scenes of train-split items and scored
  on scenes of test-split items.
Tasks that need a text tower (zeroshot, retrieval) are skipped with a note for MAE and MILAN.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import EvalConfig, to_dict
from ..data.fashion_mnist import CLASS_NAMES
from ..data.folders import CaptionTable, ImageFolderSplit
from ..data.scenes import ZEROSHOT_TEMPLATES, FashionMNISTCentred, FashionScenes, fill_template, to_float
from ..engine.checkpoint import atomic_save
from ..methods.base import PretrainMethod
from .features import extract_features
from .fewshot import fewshot_evaluate
from .finetune import finetune
from .knn import knn_classify
from .linear import linear_probe
from .retrieval import recall_at_k, relevance_from_captions
from .segmentation import segmentation_probe
from .zeroshot import zeroshot_classifier, zeroshot_scores

TASKS = ("zeroshot", "knn", "linear", "fewshot", "finetune", "retrieval", "segmentation")
CLASSIFICATION_TASKS = ("zeroshot", "knn", "linear", "fewshot")
TEXT_TASKS = ("zeroshot", "retrieval")
DATASETS = {
    **dict.fromkeys((*CLASSIFICATION_TASKS, "finetune"), "fashion-mnist"),
    "retrieval": "fashion-scenes-captions",
    "segmentation": "fashion-scenes-masks",
}
EVAL_SCENE_SEED = 1  # held-out scenes are drawn from test-split items with their own seed


FOLDER_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.")


def seeded_subset(pool: int, size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of ``size`` of ``pool`` rows (all of them if size >= pool), sorted."""
    return np.sort(np.random.default_rng([seed, pool]).permutation(pool)[:size])


@dataclass
class ClassificationData:
    """Where the classification tasks take their images from."""

    name: str
    train: Dataset  # the pool the probes and fine-tuning draw their seeded subsets from
    test: Dataset
    classnames: list[str]
    templates: tuple[str, ...]


def classification_data(dataset: str | None, canvas: int, cfg: EvalConfig, data_root: str | None) -> ClassificationData:
    """Built-in Fashion-MNIST (centred scenes), or an image folder with train/ and val/."""
    if dataset is None:
        return ClassificationData("fashion-mnist", FashionMNISTCentred("train", canvas, root=data_root),
                                  Subset(FashionMNISTCentred("test", canvas, root=data_root), range(cfg.test_size)),
                                  list(CLASS_NAMES), ZEROSHOT_TEMPLATES)
    train = ImageFolderSplit(dataset, "train", canvas)
    test = ImageFolderSplit(dataset, "val", canvas, classes=train.classes)
    test_rows = seeded_subset(len(test), cfg.test_size, cfg.seed)
    return ClassificationData(Path(dataset).name, train, Subset(test, test_rows),
                              [c.replace("_", " ") for c in train.classes], FOLDER_TEMPLATES)


def zeroshot_task(model: PretrainMethod, feats: dict, _train: dict | None, cfg: EvalConfig, data: ClassificationData) -> dict[str, Any]:
    classifier = zeroshot_classifier(model, data.classnames, data.templates, fill=fill_template)
    return {"metrics": zeroshot_scores(feats["embed"], feats["labels"], classifier),
            "details": {"templates": list(data.templates), "classnames": data.classnames}}


def knn_task(_model: PretrainMethod, feats: dict, train: dict, cfg: EvalConfig, data: ClassificationData) -> dict[str, Any]:
    metrics = {}
    for pool in ("mean", "cls"):
        scores = knn_classify(train[pool], train["labels"], feats[pool], feats["labels"], ks=cfg.knn_k, num_classes=len(data.classnames))
        metrics.update({f"{pool}_{k}": v for k, v in scores.items()})
    metrics["top1"] = metrics[f"mean_top1_k{20 if 20 in cfg.knn_k else cfg.knn_k[0]}"]
    return {"metrics": metrics, "details": {"temperature": 0.07}}


def linear_task(_model: PretrainMethod, feats: dict, train: dict, cfg: EvalConfig, _data: ClassificationData) -> dict[str, Any]:
    metrics, details = {}, {}
    for pool in ("mean", "cls"):
        result = linear_probe(train[pool], train["labels"], feats[pool], feats["labels"], seed=cfg.seed)
        metrics[f"{pool}_top1"] = result["top1"]
        details[pool] = {k: v for k, v in result.items() if k != "top1"}
        details[pool]["sweep"] = {str(k): v for k, v in result["sweep"].items()}
    metrics["top1"] = metrics["mean_top1"]
    return {"metrics": metrics, "details": details}


def fewshot_task(_model: PretrainMethod, feats: dict, train: dict, cfg: EvalConfig, _data: ClassificationData) -> dict[str, Any]:
    """Prototype and logistic classifiers on n shots per class of the probe's train subset."""
    shots = {pool: fewshot_evaluate(train[pool], train["labels"], feats[pool], feats["labels"],
                                    shots=cfg.fewshot_shots, seeds=range(cfg.fewshot_seeds))
             for pool in ("mean", "cls")}
    metrics = {f"{pool}_{name}_{n}shot": r[name]["mean"]
               for pool, by_n in shots.items() for n, r in by_n.items() for name in r}
    metrics["top1"] = metrics[f"mean_logistic_{max(cfg.fewshot_shots)}shot"]
    return {"metrics": metrics, "details": shots}


CLASSIFIERS: dict[str, Callable] = {"zeroshot": zeroshot_task, "knn": knn_task, "linear": linear_task, "fewshot": fewshot_task}


def image_caption_batch(samples: list[dict]) -> dict[str, Any]:
    return {"image": torch.stack([s["image"] for s in samples]), "caption": [s["caption"] for s in samples]}


@torch.no_grad()
def retrieval_task(model: PretrainMethod, cfg: EvalConfig, scenes: Dataset) -> dict[str, Any]:
    """Recall@1/5/10 both ways on image-caption pairs (a caption with the same text is a hit)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images, texts, captions = [], [], []
    try:
        for batch in DataLoader(scenes, batch_size=cfg.batch_size, collate_fn=image_caption_batch):
            images.append(model.encode_image(to_float(batch["image"].to(device))).float().cpu())
            texts.append(model.encode_text(model.tokenizer(batch["caption"]).to(device)).float().cpu())
            captions += batch["caption"]
    finally:
        model.train(was_training)
    similarity = F.normalize(torch.cat(images), dim=-1) @ F.normalize(torch.cat(texts), dim=-1).T
    metrics = recall_at_k(similarity, relevance_from_captions(captions))
    metrics["top1"] = metrics["image_to_text_R@1"]
    return {"metrics": metrics, "details": {"distinct_captions": len(set(captions))}, "split_sizes": {"test": len(captions)}}


def finetune_task(model: PretrainMethod, cfg: EvalConfig, data: ClassificationData) -> dict[str, Any]:
    """Whole encoder + linear head with layer-wise lr decay, on a seeded train subset."""
    train = Subset(data.train, seeded_subset(len(data.train), cfg.finetune_train_size, cfg.seed))
    test = data.test
    settings = {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr, "layer_decay": cfg.finetune_layer_decay,
                "drop_path": cfg.finetune_drop_path}
    result = finetune(model.visual, train, test, len(data.classnames), seed=cfg.seed, **settings)
    return {"metrics": {"top1": result["top1"]}, "details": {**settings, "steps": result["steps"]},
            "split_sizes": {"train": len(train), "test": len(test)}}


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


def cached_features(model: PretrainMethod, dataset: Dataset, key: str, cache_dir: Path | None, batch_size: int) -> dict:
    """``extract_features``, cached on disk under a key made of the checkpoint file (path, size,
    modification time) and the data set (name, split, rows), so re-evaluating is instant."""
    ckpt = getattr(model, "checkpoint_path", None)
    if cache_dir is None or ckpt is None:
        return extract_features(model, dataset, batch_size)
    stat = Path(ckpt).stat()
    digest = hashlib.sha1(f"{Path(ckpt).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{key}".encode()).hexdigest()[:16]
    path = cache_dir / f"{digest}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    feats = extract_features(model, dataset, batch_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(feats, path)
    return feats


def rows_key(dataset: Dataset) -> str:
    rows = np.asarray(dataset.indices) if isinstance(dataset, Subset) else np.arange(len(dataset))
    return hashlib.sha1(rows.tobytes()).hexdigest()[:12]


def evaluate(
    model: PretrainMethod, tasks: list[str], cfg: EvalConfig, out_dir: Path | None,
    model_name: str, data_root: str | None = None, log: Callable[[str], None] = print, dataset: str | None = None,
) -> dict[str, dict]:
    """Run ``tasks``; write one JSON per task to ``out_dir``. ``dataset`` (an image folder with
    train/ and val/, or a CSV/TSV of image paths and captions) replaces the built-in data of the
    tasks that can use it; the others keep theirs."""
    results = {}
    skipped = [t for t in tasks if t in TEXT_TASKS and not model.has_text]
    for task in skipped:
        log(f"{task} skipped: method '{model.config.method}' has no text tower")
    tasks = [t for t in tasks if t not in skipped]
    canvas = model.config.model.img_size
    table = dataset is not None and Path(dataset).suffix.lower() in (".csv", ".tsv")
    cache_dir = None if out_dir is None else out_dir / "feature_cache"
    data = classification_data(None if table else dataset, canvas, cfg, data_root)
    test = train = None
    if any(t in CLASSIFICATION_TASKS for t in tasks):
        start = time.perf_counter()
        test = cached_features(model, data.test, f"{data.name}|test|{rows_key(data.test)}", cache_dir, cfg.batch_size)
        if any(t in ("knn", "linear", "fewshot") for t in tasks):
            pool = Subset(data.train, seeded_subset(len(data.train), cfg.probe_train_size, cfg.seed))
            train = cached_features(model, pool, f"{data.name}|train|{rows_key(pool)}", cache_dir, cfg.batch_size)
        log(f"features of {len(test['labels'])} test and {0 if train is None else len(train['labels'])} train images in {time.perf_counter() - start:.1f}s")
    for task in tasks:
        t0 = time.perf_counter()
        name = data.name if task in (*CLASSIFICATION_TASKS, "finetune") else DATASETS[task]
        if task in CLASSIFIERS:
            result = CLASSIFIERS[task](model, test, train, cfg, data)
            result["split_sizes"] = {"test": len(test["labels"]), "train": 0 if train is None else len(train["labels"])}
        elif task == "retrieval":
            pairs = CaptionTable(dataset, canvas) if table else FashionScenes(
                "test", canvas, seed=EVAL_SCENE_SEED, length=cfg.retrieval_size, root=data_root)
            name = Path(dataset).stem if table else name
            result = retrieval_task(model, cfg, pairs)
        elif task == "finetune":
            result = finetune_task(model, cfg, data)
        else:
            png = None if out_dir is None else out_dir / f"{model_name}_segmentation_examples.png"
            if png is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
            result = segmentation_task(model, cfg, data_root, png)
        result.update({
            "dataset": name,
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
            (out_dir / f"{model_name}_{task}_{name}.json").write_text(json.dumps(result, indent=1))
    return results
