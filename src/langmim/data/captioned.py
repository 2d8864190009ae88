"""Pre-training on your own image-caption data: a CSV/TSV of image paths and captions
(open_clip's convention), or an image folder whose class names become captions through
templates (for ImageNet-style data).

Sample ``g`` of the run is a pure function of (seed, g), like the built-in scenes: epoch
``g // n`` visits the ``n`` pairs in a seeded permutation, and the crop is drawn from a
generator seeded by (seed, g). So resumed and multi-rank runs see what one process sees.

Bad samples never stop a run. Images in other modes (grayscale, palette, RGBA, CMYK, 16-bit)
are converted to RGB and counted; a pair that cannot be used (missing, empty, truncated or
unreadable file, empty caption) is replaced by a later pair of the permutation and counted by
kind. Each sample carries its counts, so they survive DataLoader workers; the training loop sums
them, logs them with the metrics and prints them at the end of the run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..config import DataConfig
from ..errors import DataError
from ..transforms import fill_template
from .folders import IMAGE_SUFFIXES, caption_problem, read_caption_table
from .images import MAX_IMAGE_PIXELS, load_rgb

CLASS_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.")
PROBLEM_KINDS = (
    "missing_file", "empty_file", "unreadable_image", "truncated_image", "empty_caption",
    "converted_grayscale", "converted_palette", "converted_alpha", "converted_cmyk", "converted_16bit", "converted_other",
    "missing_image", "bad_tar",  # WebDataset shards: a sample without an image, a damaged tar file
    "oversized_image",  # more pixels than data.max_image_pixels: a decompression bomb, never decoded
    "oversized_member",  # WebDataset shards: a tar member declaring more than data.max_member_mb, never read
    "not_regular_file",  # a device, pipe or folder where an image file was named, never opened
    "long_caption",  # a table's caption over folders.MAX_CAPTION_CHARS (131,072: csv's own field limit)
)
MAX_REPLACEMENTS = 100


def read_class_folder(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(image path, class name) pairs of ``root/<class>/<image>`` (or ``root/train/<class>``)."""
    if (root / "train").is_dir():
        root = root / "train"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(f"data.root: '{root}' has no class sub-folders (expected {root}/<class>/<image>)")
    pairs = [(p, name.replace("_", " ")) for name in classes for p in sorted((root / name).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not pairs:
        raise DataError(f"data.root: '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return pairs, classes


@dataclass(frozen=True)
class CropRecipe:
    """How a real image becomes a training crop: RandomResizedCrop over ``scale`` of its area
    (aspect 3/4 to 4/3) resampled by ``interpolation``, then a coin-flip horizontal flip where
    ``hflip``; without ``augment``, a resize and a centre crop."""

    augment: bool = True
    scale: tuple[float, float] = (0.5, 1.0)
    interpolation: str = "bicubic"
    hflip: bool = False

    @classmethod
    def from_config(cls, data: DataConfig) -> CropRecipe:
        return cls(data.augment, tuple(data.crop_scale), data.interpolation, data.hflip)


DEFAULT_CROP = CropRecipe()


def crop_uint8(image: Image.Image, size: int, rng: np.random.Generator, recipe: CropRecipe = DEFAULT_CROP) -> torch.Tensor:
    """uint8 (3, size, size) by ``recipe``, every draw from ``rng`` (a centre crop when no crop
    fits in 10 tries)."""
    pixels = v2.functional.pil_to_tensor(image)
    height, width = pixels.shape[-2:]
    mode = v2.InterpolationMode(recipe.interpolation)
    for _ in range(10 if recipe.augment else 0):
        area = height * width * rng.uniform(*recipe.scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            crop = v2.functional.resized_crop(pixels, top, left, h, w, [size, size], interpolation=mode, antialias=True)
            return v2.functional.horizontal_flip(crop) if recipe.hflip and rng.random() < 0.5 else crop
    resized = v2.functional.resize(pixels, size, interpolation=mode, antialias=True)
    crop = v2.functional.center_crop(resized, [size, size])
    return v2.functional.horizontal_flip(crop) if recipe.augment and recipe.hflip and rng.random() < 0.5 else crop


class CaptionedImages(Dataset):
    """Pre-training pairs from a CSV/TSV (``data.name=csv``) or a class folder (``data.name=imagefolder``)."""

    def __init__(self, kind: str, root: str | None, size: int, seed: int, recipe: CropRecipe = DEFAULT_CROP,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if not root:
            raise DataError(f"data.name={kind} needs data.root=PATH (a CSV/TSV file or an image folder)")
        if kind == "csv":
            self.pairs, self.classes = read_caption_table(Path(root)), None
        else:
            self.pairs, self.classes = read_class_folder(Path(root))
        self.size, self.seed, self.recipe, self.max_pixels = size, seed, recipe, max_pixels
        self._epoch_orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_orders:
            self._epoch_orders = {epoch: np.random.default_rng([self.seed, 104729, epoch]).permutation(len(self.pairs))}
        return self._epoch_orders[epoch]

    def _pair(self, index: int) -> tuple[Path, str]:
        epoch, position = divmod(index, len(self.pairs))
        return self.pairs[self._order(epoch)[position]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``; an unusable pair is replaced by a later one of the order. Only the
        sample's own pair is counted (a replacement is counted when its own turn comes), so one
        epoch counts every planted problem exactly once."""
        rng = np.random.default_rng([self.seed, 7, index])
        problems: Counter = Counter()
        for attempt in range(MAX_REPLACEMENTS):
            path, text = self._pair(index + attempt * 7919)
            kind = caption_problem(text)
            image, kind = (None, kind) if kind else load_rgb(path, self.max_pixels)
            if attempt == 0 and kind is not None:
                problems[kind] += 1
            if image is None:
                continue
            caption = text.strip() if self.classes is None else fill_template(CLASS_TEMPLATES[int(rng.integers(len(CLASS_TEMPLATES)))], text)
            counts = torch.tensor([problems[k] for k in PROBLEM_KINDS], dtype=torch.long)
            named = [f"{self._pair(index)[0]}: {kind}" for kind in problems]  # the sample's own pair, as counted
            return {"image": crop_uint8(image, self.size, rng, self.recipe), "caption": caption, "index": index,
                    "data_problems": counts, "data_problem_files": named}
        raise DataError(f"{MAX_REPLACEMENTS} pairs in a row were unusable around sample {index}; check data.root")
