"""Fine-tuning data: an image folder in ImageNet's layout (``train/<class>/``, ``val/<class>/``) or
the built-in Fashion-MNIST centred images; timm's transforms (``create_transform``: RandAugment,
random erasing, the evaluation's resize and centre crop) in langmim's normalisation; and the order
of the samples.

Every random draw of an augmentation is seeded by (seed, epoch, sample), so a sample looks the
same whichever rank, loader worker or resumed process draws it: a run resumed at any step, or run
on two ranks, sees the images an uninterrupted single process sees.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..config import Config
from ..data.eval_rows import seeded_subset
from ..data.fashion_mnist import CLASS_NAMES
from ..data.folders import IMAGE_SUFFIXES
from ..data.images import load_rgb
from ..data.scenes import FashionMNISTCentred
from ..errors import ConfigError, DataError
from ..transforms import IMAGE_MEAN, IMAGE_STD

AUGMENT_STREAM = 15485863  # separates the augmentation seeds from the order's
ORDER_STREAM = 32452843
MAX_REPLACEMENTS = 100


@contextlib.contextmanager
def seeded_rngs(*key: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded from ``key`` inside the block (timm's
    RandAugment draws from ``random``, random erasing from torch), and restored after it."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed = int(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class FolderImages:
    """``root/<split>/<class>/<image>`` listed without decoding (a folder of ImageNet's size would
    take hours to decode up front); classes from the train split."""

    def __init__(self, root: str | Path, split: str, classes: list[str] | None = None, max_pixels: int = 89_478_485) -> None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"finetune.data_root: '{root}' has no '{split}' sub-folder (expected {root}/train/<class>/... "
                            f"and {root}/val/<class>/...)")
        self.classes = classes or sorted(d.name for d in folder.iterdir() if d.is_dir())
        if not self.classes:
            raise DataError(f"finetune.data_root: '{folder}' has no class sub-folders")
        self.items = [(p, label) for label, name in enumerate(self.classes) if (folder / name).is_dir()
                      for p in sorted((folder / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.items:
            raise DataError(f"finetune.data_root: '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> tuple[Image.Image | None, int]:
        path, label = self.items[i]
        return load_rgb(path, self.max_pixels)[0], label


class FashionImages:
    """The built-in Fashion-MNIST images rendered centred on the model's canvas, as PIL images."""

    def __init__(self, split: str, canvas: int, root: str | None) -> None:
        self.source = FashionMNISTCentred(split, canvas, root=root)
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.source)

    def image(self, i: int) -> tuple[Image.Image | None, int]:
        image, label = self.source[i]
        return Image.fromarray(image.permute(1, 2, 0).numpy()), label


class Augmented(Dataset):
    """(transformed image, label, 1 if the sample's own image was unusable) for a key (epoch,
    index); an unusable image is replaced by the next usable one, and counted."""

    def __init__(self, images: FolderImages | FashionImages, rows: np.ndarray, transform, seed: int) -> None:
        self.images, self.rows, self.transform, self.seed = images, rows, transform, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, index = key
        for attempt in range(MAX_REPLACEMENTS):
            image, label = self.images.image(int(self.rows[(index + attempt) % len(self.rows)]))
            if image is not None:
                with seeded_rngs(self.seed, AUGMENT_STREAM, epoch, index):
                    return self.transform(image), label, int(attempt > 0)
        raise DataError(f"{MAX_REPLACEMENTS} images in a row were unusable from sample {index}; check finetune.data_root")


def build_transforms(cfg: Config, training: bool):
    """timm's ``create_transform`` with the recipe's augmentation (training) or resize to
    ``img_size / crop_pct`` and centre crop (evaluation), bicubic, in langmim's normalisation."""
    from timm.data import create_transform

    f = cfg.finetune
    if not training:
        return create_transform(cfg.model.img_size, is_training=False, interpolation="bicubic", crop_pct=f.crop_pct,
                                mean=IMAGE_MEAN, std=IMAGE_STD)
    return create_transform(cfg.model.img_size, is_training=True, interpolation="bicubic", color_jitter=f.color_jitter,
                            auto_augment=f.aa, re_prob=f.reprob, re_mode=f.remode, re_count=f.recount,
                            mean=IMAGE_MEAN, std=IMAGE_STD)


def open_images(cfg: Config, split: str, classes: list[str] | None = None) -> FolderImages | FashionImages:
    f = cfg.finetune
    if f.dataset == "imagefolder":
        if not f.data_root:
            raise ConfigError("finetune.dataset=imagefolder needs finetune.data_root=DIR (DIR/train/<class>/... and DIR/val/<class>/...)")
        return FolderImages(f.data_root, "val" if split == "val" else "train", classes, cfg.data.max_image_pixels)
    return FashionImages("test" if split == "val" else "train", cfg.model.img_size, f.data_root)


def build_datasets(cfg: Config) -> tuple[Augmented, Augmented, list[str]]:
    """The train and validation sets (seeded subsets where ``train_size`` / ``val_size`` ask) and the class names."""
    f = cfg.finetune
    train_images = open_images(cfg, "train")
    val_images = open_images(cfg, "val", train_images.classes)
    rows = [np.arange(len(images)) if size is None else seeded_subset(len(images), size, f.seed)
            for images, size in ((train_images, f.train_size), (val_images, f.val_size))]
    train = Augmented(train_images, rows[0], build_transforms(cfg, True), f.seed)
    val = Augmented(val_images, rows[1], build_transforms(cfg, False), f.seed)
    return train, val, train_images.classes


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, ORDER_STREAM, epoch]).permutation(n)


class StepBatches(Sampler[list[tuple[int, int]]]):
    """This rank's micro-batches from optimizer step ``start_step`` on: step ``k`` of epoch ``e``
    takes samples ``k * B .. (k + 1) * B`` of epoch ``e``'s seeded order (the last partial batch is
    dropped), split into ``accum`` micro-batches, each split evenly over the ranks."""

    def __init__(self, n: int, seed: int, batch_size: int, accum: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.batch_size, self.accum = n, seed, batch_size, accum
        self.start_step, self.total_steps, self.rank, self.world_size = start_step, total_steps, rank, world_size
        self.micro = batch_size // accum
        self.local = self.micro // world_size
        self.steps_per_epoch = n // batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, order_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(self.n, self.seed, epoch), epoch
            for m in range(self.accum):
                first = k * self.batch_size + m * self.micro + self.rank * self.local
                yield [(epoch, int(i)) for i in order[first:first + self.local]]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accum
