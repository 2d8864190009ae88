"""User data sets for evaluation: an image folder with class sub-folders, and a CSV/TSV of image
paths and captions. Both yield uint8 (3, S, S) images (resize the short side, centre crop), the
form the built-in data sets have, so every evaluation task takes them unchanged. Unreadable
images and empty or over-long captions are skipped, counted and reported, never fatal."""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
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
MAX_CAPTION_CHARS = 131_072  # csv's own field limit: a longer caption is a bad sample (a text encoder reads ~77 tokens)


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


def caption_problem(caption: str) -> str | None:
    """Why a table's caption cannot be used (``empty_caption``, ``long_caption``), or None."""
    if not caption.strip():
        return "empty_caption"
    return "long_caption" if len(caption) > MAX_CAPTION_CHARS else None


def usable_captions(rows: list[tuple[Path, str]], label: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """The rows whose caption can be used, in order, and one line per other row naming it (its
    line, after the header) and why; the latter are printed."""
    problems = [caption_problem(caption) for _, caption in rows]
    skipped = [f"row {i + 2}: {kind}" for i, kind in enumerate(problems) if kind]
    if skipped:
        print(f"{label}: skipped {len(skipped)} row(s) without a usable caption: {'; '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    return [row for row, kind in zip(rows, problems) if kind is None], skipped


@contextmanager
def csv_field_limit(chars: int) -> Iterator[None]:
    """csv's field size limit (process-wide) at least ``chars`` for the block, restored after."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, chars))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def outside_folder(paths: list[str], folder: Path) -> int:
    """How many of ``paths`` (relative to ``folder`` or absolute; links not followed) lie outside it."""
    base = os.path.abspath(folder).rstrip(os.sep) + os.sep
    return sum(not (os.path.normpath(os.path.join(base, p)) + os.sep).startswith(base) for p in paths)


def read_caption_table(path: Path) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a CSV/TSV (by suffix) with a header; relative paths are
    taken from the table's folder. No field is too long for csv here (a field is at most the
    file): long captions are ``caption_problem``'s to judge. Paths outside the folder are read as
    written, and counted in one line."""
    if not path.is_file():
        raise DataError(f"caption table '{path}' not found")
    with path.open(newline="") as f, csv_field_limit(path.stat().st_size):
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
    outside = outside_folder([p for p, _ in rows], path.parent)
    if outside:
        print(f"'{path}': {outside} of {len(rows)} image path(s) lie outside the table's folder (absolute or ../); "
              "they are read as written, as open_clip reads them")
    return [(Path(p) if Path(p).is_absolute() else path.parent / p, c) for p, c in rows]


class CaptionTable(Dataset):
    """A CSV (or TSV, by suffix) with a header naming an image column (filepath, image, path or
    file) and a caption column (caption, title or text); relative paths are taken from the
    table's folder. Yields dicts with ``image`` (uint8) and ``caption``."""

    def __init__(self, path: str | Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        path = Path(path)
        rows, bad_captions = usable_captions(read_caption_table(path), str(path))
        paths = [p for p, _ in rows]
        keep, skipped = readable_images(paths, str(path), max_pixels)
        self.max_pixels = max_pixels
        self.skipped = skipped + bad_captions
        self.paths = [paths[i] for i in keep]
        self.captions = [rows[i][1].strip() for i in keep]
        if not self.paths:
            raise DataError(f"'{path}' has no readable image with a caption")
        self.transform = uint8_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(read_rgb(self.paths[i], self.max_pixels)), "caption": self.captions[i]}
