"""User data sets for evaluation: an image folder with class sub-folders, and a CSV/TSV of image
paths and captions. Both yield uint8 (3, S, S) images (resize the short side, centre crop), the
form the built-in data sets have, so every evaluation task takes them unchanged. Unreadable
images are skipped, counted and reported, never fatal."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import DataError
from .images import MAX_IMAGE_PIXELS, load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
IMAGE_COLUMNS = ("filepath", "image", "path", "file")
CAPTION_COLUMNS = ("caption", "title", "text")


def uint8_transform(size: int) -> v2.Compose:
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
    ])


def readable_images(paths: list[Path], label: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[list[int], list[str]]:
    """Indices of ``paths`` that decode in full (so truncated files and decompression bombs are
    caught here, not mid-evaluation), and one line per skipped file naming it and why."""
    keep, skipped = [], []
    for i, path in enumerate(paths):
        image, problem = load_rgb(path, max_pixels)
        if image is None:
            skipped.append(f"{path}: {problem}")
        else:
            keep.append(i)
    if skipped:
        print(f"{label}: skipped {len(skipped)} unusable image(s): {'; '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    return keep, skipped


def read_rgb(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An image that decoded when the data set was built; one that no longer does is an error."""
    image, problem = load_rgb(path, max_pixels)
    if image is None:
        raise DataError(f"'{path}' decoded when the data set was built but no longer does ({problem})")
    return image


class ImageFolderSplit(Dataset):
    """``root/<split>/<class>/<image>``: (uint8 image, class index) pairs; classes are the
    sorted sub-folder names of the train split, shared by every split."""

    def __init__(self, root: str | Path, split: str, size: int, classes: list[str] | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            raise DataError(f"image folder '{root}' has no '{split}' sub-folder (expected {root}/train/<class>/... and {root}/val/<class>/...)")
        self.classes = classes or sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if not self.classes:
            raise DataError(f"'{split_dir}' has no class sub-folders")
        paths, labels = [], []
        for index, name in enumerate(self.classes):
            folder = split_dir / name
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            paths += files
            labels += [index] * len(files)
        if not paths:
            raise DataError(f"'{split_dir}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        keep, self.skipped = readable_images(paths, str(split_dir), max_pixels)
        self.max_pixels = max_pixels
        self.paths = [paths[i] for i in keep]
        self.labels = torch.tensor([labels[i] for i in keep])
        self.transform = uint8_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[i], self.max_pixels)), int(self.labels[i])


def read_caption_table(path: Path) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a CSV/TSV (by suffix) with a header; relative paths are
    taken from the table's folder."""
    if not path.is_file():
        raise DataError(f"caption table '{path}' not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = reader.fieldnames or []
        image_key = next((c for c in IMAGE_COLUMNS if c in header), None)
        caption_key = next((c for c in CAPTION_COLUMNS if c in header), None)
        if image_key is None or caption_key is None:
            raise DataError(f"'{path}': header {header} needs an image column ({', '.join(IMAGE_COLUMNS)}) "
                            f"and a caption column ({', '.join(CAPTION_COLUMNS)})")
        rows = [(r.get(image_key) or "", r.get(caption_key) or "") for r in reader]
    if not rows:
        raise DataError(f"caption table '{path}' has no rows")
    return [(Path(p) if Path(p).is_absolute() else path.parent / p, c) for p, c in rows]


class CaptionTable(Dataset):
    """A CSV (or TSV, by suffix) with a header naming an image column (filepath, image, path or
    file) and a caption column (caption, title or text); relative paths are taken from the
    table's folder. Yields dicts with ``image`` (uint8) and ``caption``."""

    def __init__(self, path: str | Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        path = Path(path)
        rows = read_caption_table(path)
        empty = [i for i, (_, caption) in enumerate(rows) if not caption.strip()]
        rows = [r for i, r in enumerate(rows) if i not in set(empty)]
        paths = [p for p, _ in rows]
        keep, skipped = readable_images(paths, str(path), max_pixels)
        self.max_pixels = max_pixels
        self.skipped = skipped + [f"row {i + 2}: empty caption" for i in empty]
        self.paths = [paths[i] for i in keep]
        self.captions = [rows[i][1].strip() for i in keep]
        if not self.paths:
            raise DataError(f"'{path}' has no readable image with a caption")
        self.transform = uint8_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(read_rgb(self.paths[i], self.max_pixels)), "caption": self.captions[i]}
