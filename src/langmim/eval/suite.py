"""The evaluation suite: one registry of tasks with one signature, one CLIP_benchmark-style JSON
per (model, task, data set).

Built-in data, every evaluation image made of test-split items only (probes and heads fit on
train-split items):
- zeroshot, knn, linear, fewshot, finetune: Fashion-MNIST test images rendered as centred scenes;
- retrieval: held-out captioned scenes;
- presence, cells, binding, counting: scene probes (`scene_probes`);
- compositional: each held-out scene against captions that change one thing (`compositional`);
- detection, segmentation: heads on the scenes' refined patch-token grid (`scene_features`);
- shift: zero-shot and the clean linear probe on shifted renders of the test set (`data.shifted`).
A task is a function of an `EvalContext`, which holds the model, the config and the features
computed so far (in memory, and on disk per checkpoint), so tasks that share data share features.
Tasks that need a text tower are skipped with a note for MAE and MILAN.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import EvalConfig, to_dict
from ..data.benchmark_sets import BenchmarkSet, open_benchmark_set
from ..data.compositional import CompositionalScenes
from ..data.eval_rows import seeded_subset
from ..data.fashion_mnist import CLASS_NAMES
from ..data.folders import CaptionTable, ImageFolderSplit
from ..data.scenes import EVAL_SCENE_SEED, FashionMNISTCentred, FashionScenes
from ..data.shifted import SHIFT_STYLES, FashionMNISTShifted
from ..errors import DataError
from ..interface import LoadedModel
from ..io import atomic_save, safe_torch_load
from ..transforms import ZEROSHOT_TEMPLATES, fill_template, to_float
from .clip_benchmark import write_clip_benchmark
from .compositional import compositional_scores
from .detection import detection_probe
from .features import extract_features
from .fewshot import fewshot_evaluate
from .finetune import finetune
from .inference import evaluating
from .knn import knn_classify
from .linear import LinearProbe, accuracy, fit_linear_probe
from .retrieval import recall_at_k, relevance_from_captions
from .scene_features import cell_pooling_weights, scene_annotations, scene_tokens
from .scene_probes import POOLS, binding_probe, cell_probe, counting_probe, presence_probe
from .segmentation import segmentation_probe
from .zeroshot import zeroshot_classifier, zeroshot_scores

FOLDER_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.")


def rows_key(dataset: Dataset) -> str:
    rows = np.asarray(dataset.indices) if isinstance(dataset, Subset) else np.arange(len(dataset))
    return hashlib.sha1(rows.tobytes()).hexdigest()[:12]


@dataclass
class ClassificationData:
    """Where the classification tasks take their images from."""

    name: str
    train: Dataset | None  # the pool the probes and fine-tuning draw their seeded subsets from
    test: Dataset
    classnames: list[str]
    templates: tuple[str, ...]
    fill: Callable[[str, str], str] = fill_template  # puts a class name into a template
    location: str = ""  # the folder of a user's data set, so the feature cache tells same-named sets apart


def classification_data(dataset: str | BenchmarkSet | None, canvas: int, cfg: EvalConfig, data_root: str | None) -> ClassificationData:
    """Built-in Fashion-MNIST (centred scenes), an image folder with train/ and val/, or a
    CLIP_benchmark classification set (its test split; its train split where present)."""
    if dataset is None:
        return ClassificationData("fashion-mnist", FashionMNISTCentred("train", canvas, root=data_root),
                                  Subset(FashionMNISTCentred("test", canvas, root=data_root), range(cfg.test_size)),
                                  list(CLASS_NAMES), ZEROSHOT_TEMPLATES)
    if isinstance(dataset, BenchmarkSet):  # its whole test split, as CLIP_benchmark scores it
        return ClassificationData(dataset.name, dataset.train, dataset.test, dataset.classnames, dataset.templates,
                                  dataset.fill, str(dataset.root))
    train = ImageFolderSplit(dataset, "train", canvas, max_pixels=cfg.max_image_pixels)
    test = ImageFolderSplit(dataset, "val", canvas, classes=train.classes, max_pixels=cfg.max_image_pixels)
    test_rows = seeded_subset(len(test), cfg.test_size, cfg.seed)
    return ClassificationData(Path(dataset).name, train, Subset(test, test_rows),
                              [c.replace("_", " ") for c in train.classes], FOLDER_TEMPLATES, location=str(Path(dataset).resolve()))


def checkpoint_identity(model: LoadedModel) -> str | None:
    """The checkpoint file's path, size and modification time; None for a model without one."""
    ckpt = model.checkpoint_path
    if ckpt is None or not Path(ckpt).is_file():
        return None
    stat = Path(ckpt).stat()
    return f"{Path(ckpt).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


@dataclass
class EvalContext:
    """What a task sees: the model, the eval config, the data sources, and features shared
    between tasks (kept in memory for this evaluation, and on disk under ``out_dir`` keyed by
    the checkpoint file and the data, so re-evaluating is instant)."""

    model: LoadedModel
    cfg: EvalConfig
    out_dir: Path | None = None
    data_root: str | None = None
    dataset: str | None = None  # the user's image folder, CSV/TSV table or wds/NAME, replacing built-in data where it can
    dataset_root: str | None = None  # the folder of a wds/NAME set (CLIP_benchmark's --dataset_root)
    log: Callable[[str], None] = print
    model_name: str = "model"
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def canvas(self) -> int:
        return self.model.image_size

    @property
    def table(self) -> bool:
        return self.dataset is not None and Path(self.dataset).suffix.lower() in (".csv", ".tsv")

    @functools.cached_property
    def benchmark_set(self) -> BenchmarkSet | None:
        """The CLIP_benchmark set named by ``--dataset wds/NAME``, if that is what was given."""
        if self.dataset is None or not self.dataset.startswith("wds/"):
            return None
        if self.dataset_root is None:
            raise DataError(f"--dataset {self.dataset} needs --dataset-root DIR: the folder of the CLIP_benchmark set")
        return open_benchmark_set(self.dataset, self.dataset_root, self.canvas, self.cfg.max_image_pixels)

    @functools.cached_property
    def classification(self) -> ClassificationData:
        benchmark = self.benchmark_set
        if benchmark is not None:
            return classification_data(benchmark if benchmark.kind == "classification" else None, self.canvas, self.cfg, self.data_root)
        return classification_data(None if self.table else self.dataset, self.canvas, self.cfg, self.data_root)

    @functools.cached_property
    def patch_size(self) -> int:
        """The encoder's patch size, from its token count (external models do not state it)."""
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.canvas, self.canvas, device=next(self.model.parameters()).device)
            tokens = self.model.visual.forward_features(probe).shape[1] - 1
        return self.canvas // math.isqrt(tokens)

    def remember(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, memoised under ``key`` for this evaluation."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, memoised under ``key`` for this evaluation and on disk per checkpoint."""
        return self.remember(key, lambda: self._from_disk_or_compute(key, compute))

    def _from_disk_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        identity = checkpoint_identity(self.model)
        path = None
        if self.out_dir is not None and identity is not None:
            digest = hashlib.sha1(f"{identity}|{key}".encode()).hexdigest()[:16]
            path = self.out_dir / "feature_cache" / f"{digest}.pt"
        if path is not None and path.is_file():
            value = safe_torch_load(path, map_location=None, what="feature cache")  # tensors back where they were computed
        else:
            start = time.perf_counter()
            value = compute()
            self.log(f"features: {key} in {time.perf_counter() - start:.1f}s")
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save(value, path)
        return value

    def image_features(self, dataset: Dataset, name: str) -> dict:
        """`extract_features` of a data set of (image, label) pairs."""
        return self.cached(f"{name}|{rows_key(dataset)}", lambda: extract_features(self.model, dataset, self.cfg.batch_size))

    def classification_features(self, split: str) -> dict:
        """Features of the classification test rows, or of the seeded train pool the probes fit on."""
        data = self.classification
        name = f"{data.name}@{data.location}" if data.location else data.name
        if split == "test":
            return self.image_features(data.test, f"{name}|test")
        if data.train is None:
            raise DataError(f"{data.name} has no train split, which the probes and fine-tuning fit on; zero-shot runs on its test split alone")
        pool = Subset(data.train, seeded_subset(len(data.train), self.cfg.probe_train_size, self.cfg.seed))
        return self.image_features(pool, f"{name}|train")

    def scenes(self, split: str, length: int | None = None) -> FashionScenes:
        size = self.cfg.scene_train_size if split == "train" else self.cfg.scene_test_size
        return FashionScenes(split, self.canvas, seed=EVAL_SCENE_SEED, length=length or size, root=self.data_root)

    def scene_features(self, split: str) -> dict:
        """Tokens, refined patch grid and annotations of the evaluation scenes of ``split``."""
        scenes = self.scenes(split)
        refine = self.cfg.dense_refine
        tokens = self.cached(f"fashion-scenes|{split}|{len(scenes)}|refine{refine}",
                             lambda: scene_tokens(self.model, scenes, self.patch_size, refine, self.cfg.batch_size))
        return {**tokens, **self.remember(f"annotations|{split}", lambda: scene_annotations(scenes))}

    def linear_probe(self, pool: str) -> LinearProbe:
        """The classification linear probe on ``pool`` features, fit once and shared by tasks."""
        def fit() -> LinearProbe:
            train = self.classification_features("train")
            return fit_linear_probe(train[pool], train["labels"], seed=self.cfg.seed, num_outputs=len(self.classification.classnames))
        return self.remember(f"linear-probe|{pool}", fit)

    def zeroshot_classifier(self) -> torch.Tensor:
        data = self.classification
        return self.remember(f"zeroshot-classifier|{data.name}",
                             lambda: zeroshot_classifier(self.model, data.classnames, data.templates, fill=data.fill))


@dataclass(frozen=True)
class Task:
    """A registered evaluation: ``run(ctx)`` returns {"metrics": {..., "top1"}, "details", "split_sizes"}."""

    name: str
    run: Callable[[EvalContext], dict]
    dataset: str | None  # the built-in data set's name; None: the classification data's
    needs_text: bool = False


TASKS: dict[str, Task] = {}


def task(name: str, dataset: str | None = None, needs_text: bool = False) -> Callable:
    """Register ``run`` as the evaluation task ``name``."""
    def register(run: Callable[[EvalContext], dict]) -> Callable[[EvalContext], dict]:
        TASKS[name] = Task(name, run, dataset, needs_text)
        return run
    return register


def classification_sizes(ctx: EvalContext, train: bool = True) -> dict[str, int]:
    sizes = {"test": len(ctx.classification_features("test")["labels"])}
    return {**sizes, "train": len(ctx.classification_features("train")["labels"])} if train else sizes


@task("zeroshot", needs_text=True)
def zeroshot_task(ctx: EvalContext) -> dict[str, Any]:
    test = ctx.classification_features("test")
    return {"metrics": zeroshot_scores(test["embed"], test["labels"], ctx.zeroshot_classifier()),
            "details": {"templates": list(ctx.classification.templates), "classnames": ctx.classification.classnames},
            "split_sizes": classification_sizes(ctx, train=False)}


@task("knn")
def knn_task(ctx: EvalContext) -> dict[str, Any]:
    test, train, cfg = ctx.classification_features("test"), ctx.classification_features("train"), ctx.cfg
    metrics = {}
    for pool in POOLS:
        scores = knn_classify(train[pool], train["labels"], test[pool], test["labels"], ks=cfg.knn_k, num_classes=len(ctx.classification.classnames))
        metrics.update({f"{pool}_{k}": v for k, v in scores.items()})
    metrics["top1"] = metrics[f"mean_top1_k{20 if 20 in cfg.knn_k else cfg.knn_k[0]}"]
    return {"metrics": metrics, "details": {"temperature": 0.07}, "split_sizes": classification_sizes(ctx)}


@task("linear")
def linear_task(ctx: EvalContext) -> dict[str, Any]:
    test = ctx.classification_features("test")
    metrics, details = {}, {}
    for pool in POOLS:
        probe = ctx.linear_probe(pool)
        metrics[f"{pool}_top1"] = accuracy(probe(test[pool]), test["labels"])
        details[pool] = {"best_weight_decay": probe.best_weight_decay, "val_top1": probe.val_score,
                         "sweep": {str(k): v for k, v in probe.sweep.items()}, "n_train": probe.n_train,
                         "n_val": probe.n_val, "n_test": len(test["labels"])}
    metrics["top1"] = metrics["mean_top1"]
    return {"metrics": metrics, "details": details, "split_sizes": classification_sizes(ctx)}


@task("fewshot")
def fewshot_task(ctx: EvalContext) -> dict[str, Any]:
    """Prototype and logistic classifiers on n shots per class of the probe's train subset."""
    test, train, cfg = ctx.classification_features("test"), ctx.classification_features("train"), ctx.cfg
    shots = {pool: fewshot_evaluate(train[pool], train["labels"], test[pool], test["labels"],
                                    shots=cfg.fewshot_shots, seeds=range(cfg.fewshot_seeds))
             for pool in POOLS}
    if not shots["mean"]:
        raise DataError(f"few-shot: the smallest class has fewer train images than n={min(cfg.fewshot_shots)}")
    metrics = {f"{pool}_{name}_{n}shot": r[name]["mean"]
               for pool, by_n in shots.items() for n, r in by_n.items() for name in r}
    metrics["top1"] = metrics[f"mean_logistic_{max(shots['mean'], key=int)}shot"]
    return {"metrics": metrics, "details": shots, "split_sizes": classification_sizes(ctx)}


@task("finetune")
def finetune_task(ctx: EvalContext) -> dict[str, Any]:
    """Whole encoder + linear head with layer-wise lr decay, on a seeded train subset."""
    cfg, data = ctx.cfg, ctx.classification
    if data.train is None:
        raise DataError(f"{data.name} has no train split, which fine-tuning trains on")
    train = Subset(data.train, seeded_subset(len(data.train), cfg.finetune_train_size, cfg.seed))
    settings = {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr, "layer_decay": cfg.finetune_layer_decay,
                "drop_path": cfg.finetune_drop_path, "min_steps": cfg.finetune_min_steps}
    result = finetune(ctx.model.visual, train, data.test, len(data.classnames), seed=cfg.seed, **settings)
    return {"metrics": {"top1": result["top1"]}, "details": {**settings, "steps": result["steps"], "epochs_run": result["epochs"]},
            "split_sizes": {"train": len(train), "test": len(data.test)}}


def image_captions_batch(samples: list[dict]) -> dict[str, Any]:
    """Images and, per image, its captions (one for the built-in scenes and tables, several in
    a CLIP_benchmark retrieval set)."""
    return {"image": torch.stack([s["image"] for s in samples]),
            "captions": [s["captions"] if "captions" in s else [s["caption"]] for s in samples]}


def retrieval_pairs(ctx: EvalContext) -> tuple[Dataset, str | None, list[str], bool]:
    """(image-caption data set, its name where not the built-in one, the samples it skipped,
    whether a caption with the same text as an image's own is a hit)."""
    benchmark = ctx.benchmark_set
    if benchmark is not None and benchmark.kind == "retrieval":
        return benchmark.test, benchmark.name, benchmark.test.skipped, benchmark.same_text_hits
    if ctx.table:
        table = CaptionTable(ctx.dataset, ctx.canvas, ctx.cfg.max_image_pixels)
        return table, Path(ctx.dataset).stem, table.skipped, True
    return ctx.scenes("test", ctx.cfg.retrieval_size), None, [], True


@task("retrieval", dataset="fashion-scenes-captions", needs_text=True)
@torch.no_grad()
def retrieval_task(ctx: EvalContext) -> dict[str, Any]:
    """Recall@1/5/10 both ways on image-caption pairs (what counts as a hit: ``eval/retrieval.py``)."""
    model = ctx.model
    pairs, name, skipped, same_text = retrieval_pairs(ctx)
    images, texts, image_captions = [], [], []
    with evaluating(model) as device:
        for batch in DataLoader(pairs, batch_size=ctx.cfg.batch_size, collate_fn=image_captions_batch):
            images.append(model.encode_image(to_float(batch["image"].to(device))).float().cpu())
            flat = [c for captions in batch["captions"] for c in captions]
            texts.append(model.encode_text(model.tokenizer(flat).to(device)).float().cpu())
            image_captions += batch["captions"]
    similarity = F.normalize(torch.cat(images), dim=-1) @ F.normalize(torch.cat(texts), dim=-1).T
    metrics = recall_at_k(similarity, relevance_from_captions(image_captions, same_text))
    metrics["top1"] = metrics["image_to_text_R@1"]
    captions = [c for per_image in image_captions for c in per_image]
    result = {"metrics": metrics, "details": {"captions": len(captions), "distinct_captions": len(set(captions)),
                                              "same_text_hits": same_text},
              "split_sizes": {"test": len(image_captions)}}
    if name is not None:
        result["dataset"] = name
        result["details"]["skipped"] = skipped  # unusable images and empty captions, named
    return result


def scene_probe_args(ctx: EvalContext) -> tuple[dict, dict, list[int], range]:
    return ctx.scene_features("train"), ctx.scene_features("test"), ctx.cfg.lowshot_shots, range(ctx.cfg.fewshot_seeds)


@task("presence", dataset="fashion-scenes")
def presence_task(ctx: EvalContext) -> dict[str, Any]:
    return presence_probe(*scene_probe_args(ctx), seed=ctx.cfg.seed)


@task("cells", dataset="fashion-scenes")
def cells_task(ctx: EvalContext) -> dict[str, Any]:
    return cell_probe(*scene_probe_args(ctx)[:2], cell_pooling_weights(ctx.canvas, ctx.patch_size), *scene_probe_args(ctx)[2:], seed=ctx.cfg.seed)


@task("binding", dataset="fashion-scenes")
def binding_task(ctx: EvalContext) -> dict[str, Any]:
    return binding_probe(*scene_probe_args(ctx), seed=ctx.cfg.seed)


@task("counting", dataset="fashion-scenes")
def counting_task(ctx: EvalContext) -> dict[str, Any]:
    return counting_probe(*scene_probe_args(ctx), seed=ctx.cfg.seed)


@task("compositional", dataset="fashion-scenes-compositional", needs_text=True)
def compositional_task(ctx: EvalContext) -> dict[str, Any]:
    scenes = CompositionalScenes(ctx.scenes("test"), seed=ctx.cfg.seed)
    result = compositional_scores(ctx.model, scenes, ctx.cfg.batch_size)
    result["split_sizes"] = {"test": len(scenes)}
    return result


def item_lists(split: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per scene, its (k, 4) boxes and (k,) labels without the -1 padding."""
    keep = split["labels"] >= 0
    return [b[k] for b, k in zip(split["boxes"], keep)], [label[k] for label, k in zip(split["labels"], keep)]


@task("detection", dataset="fashion-scenes-boxes")
def detection_task(ctx: EvalContext) -> dict[str, Any]:
    """A light dense head on the refined patch grid, trained on train scenes' boxes; COCO AP."""
    train, test = ctx.scene_features("train"), ctx.scene_features("test")
    scores = detection_probe(train["dense"], *item_lists(train), test["dense"], *item_lists(test), image_size=ctx.canvas,
                             num_classes=len(CLASS_NAMES), epochs=ctx.cfg.detection_epochs, seed=ctx.cfg.seed)
    per_class = scores.pop("ap50_per_class")
    sizes = {"train": scores.pop("n_train"), "test": scores.pop("n_test")}
    return {"metrics": {**scores, "top1": scores["ap50"]}, "details": {"ap50_per_class": dict(zip(CLASS_NAMES, per_class)),
            "refine": ctx.cfg.dense_refine, "epochs": scores.pop("epochs")}, "split_sizes": sizes}


@task("segmentation", dataset="fashion-scenes-masks")
def segmentation_task(ctx: EvalContext) -> dict[str, Any]:
    train, test = ctx.scene_features("train"), ctx.scene_features("test")
    scores = segmentation_probe(train["dense"], train["mask"], test["dense"], test["mask"], num_classes=1 + len(CLASS_NAMES),
                                batch_size=ctx.cfg.batch_size, epochs=ctx.cfg.segmentation_epochs, seed=ctx.cfg.seed)
    predictions = scores.pop("example_predictions")
    if ctx.out_dir is not None:
        from .figures import plot_segmentation_examples

        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        scenes = ctx.scenes("test")
        plot_segmentation_examples([scenes[i] for i in range(len(predictions))], predictions,
                                   ctx.out_dir / f"{ctx.model_name}_segmentation_examples.png")
    per_class = scores.pop("per_class_iou")
    metrics = {key: scores[key] for key in ("miou", "foreground_miou", "pixel_accuracy", "item_iou", "garment_accuracy_on_items")}
    metrics["top1"] = scores["miou"]
    return {"metrics": metrics, "details": {"per_class_iou": dict(zip(["background", *CLASS_NAMES], per_class)),
                                            "epochs": scores["epochs"], "refine": ctx.cfg.dense_refine},
            "split_sizes": {"train": scores["n_train"], "test": scores["n_test"]}}


@task("shift", dataset="fashion-mnist-shifted")
def shift_task(ctx: EvalContext) -> dict[str, Any]:
    """Per shifted style of the first ``eval.shift_test_size`` test items: zero-shot (with a text
    tower) and the linear probe fit on clean renders (patch mean), beside the clean score of the
    same items."""
    rows = range(min(ctx.cfg.shift_test_size, ctx.cfg.test_size))
    clean = ctx.classification_features("test")
    clean = {k: v[: len(rows)] for k, v in clean.items()}
    probe = ctx.linear_probe("mean")
    zeroshot = ctx.zeroshot_classifier() if ctx.model.has_text else None

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
    metrics["top1"] = metrics["zeroshot_shifted_mean" if zeroshot is not None else "linear_shifted_mean"]
    return {"metrics": metrics, "details": {"styles": list(SHIFT_STYLES), "probe_weight_decay": probe.best_weight_decay},
            "split_sizes": {"test_per_style": len(rows), "probe_train": probe.n_train + probe.n_val}}


def evaluate(
    model: LoadedModel, tasks: list[str], cfg: EvalConfig, out_dir: Path | None,
    model_name: str, data_root: str | None = None, log: Callable[[str], None] = print, dataset: str | None = None,
    dataset_root: str | None = None,
) -> dict[str, dict]:
    """Run ``tasks``; write one JSON per task to ``out_dir``. ``dataset`` (an image folder with
    train/ and val/, a CSV/TSV of image paths and captions, or ``wds/NAME``: the CLIP_benchmark
    set in ``dataset_root``) replaces the built-in data of the tasks that can use it; the others
    keep theirs."""
    ctx = EvalContext(model, cfg, out_dir, data_root, dataset, dataset_root, log, model_name)
    results = {}
    for name in tasks:
        spec = TASKS[name]
        if spec.needs_text and not model.has_text:
            log(f"{name} skipped: '{model.source}' has no text tower")
            continue
        start = time.perf_counter()
        result = spec.run(ctx)
        result.setdefault("dataset", spec.dataset or ctx.classification.name)
        result.update({
            "model": model_name,
            "task": name,
            "checkpoint": model.checkpoint_path,
            "step": model.step,
            "has_text": model.has_text,
            "config": to_dict(model.config) if model.config is not None else {"method": model.source},
            "seeds": {"eval": cfg.seed, "train": model.config.train.seed if model.config is not None else None},
            "seconds": time.perf_counter() - start,
        })
        results[name] = result
        log(f"{name}: {result['metrics']['top1']:.2f} ({result['seconds']:.1f}s)")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{model_name}_{name}_{result['dataset'].replace('/', '-')}.json").write_text(json.dumps(result, indent=1))
            write_clip_benchmark(result, out_dir)
    return results
