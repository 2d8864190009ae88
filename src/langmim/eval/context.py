"""What an evaluation task sees: the model, the eval config, the data sources (built-in, an image
folder, a CSV/TSV table or a CLIP_benchmark set), and the features computed so far, shared between
tasks through the evaluation's ``FeatureCache``. What tasks fit and share beyond features (the
linear probe, the zero-shot classifier) sits beside its protocol, memoised in ``ctx.cache``; this
module imports no protocol, so the protocols' task adapters can import it."""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..config import EvalConfig
from ..data.benchmark_sets import BenchmarkSet, open_benchmark_set
from ..data.eval_rows import seeded_subset
from ..data.fashion_mnist import CLASS_NAMES
from ..data.folders import ImageFolderSplit
from ..data.scenes import EVAL_SCENE_SEED, FashionMNISTCentred, FashionScenes
from ..errors import DataError
from ..interface import LoadedModel
from ..transforms import ZEROSHOT_TEMPLATES, fill_template
from .feature_cache import FeatureCache
from .features import extract_features
from .scene_features import scene_annotations, scene_tokens

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
    cache: FeatureCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = FeatureCache(self.model, self.out_dir, self.log)

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

    def image_features(self, dataset: Dataset, name: str) -> dict:
        """`extract_features` of a data set of (image, label) pairs."""
        return self.cache.cached(f"{name}|{rows_key(dataset)}", lambda: extract_features(self.model, dataset, self.cfg.batch_size))

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

    def classification_sizes(self, train: bool = True) -> dict[str, int]:
        """The classification tasks' split sizes: test rows and, with ``train``, the probes' pool."""
        sizes = {"test": len(self.classification_features("test")["labels"])}
        return {**sizes, "train": len(self.classification_features("train")["labels"])} if train else sizes

    def scenes(self, split: str, length: int | None = None) -> FashionScenes:
        size = self.cfg.scene_train_size if split == "train" else self.cfg.scene_test_size
        return FashionScenes(split, self.canvas, seed=EVAL_SCENE_SEED, length=length or size, root=self.data_root)

    def scene_features(self, split: str) -> dict:
        """Tokens, refined patch grid and annotations of the evaluation scenes of ``split``."""
        scenes = self.scenes(split)
        refine = self.cfg.dense_refine
        tokens = self.cache.cached(f"fashion-scenes|{split}|{len(scenes)}|refine{refine}",
                                   lambda: scene_tokens(self.model, scenes, self.patch_size, refine, self.cfg.batch_size))
        return {**tokens, **self.cache.remember(f"annotations|{split}", lambda: scene_annotations(scenes))}

