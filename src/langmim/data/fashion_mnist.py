"""Locate and parse the Fashion-MNIST idx files, the raw material of the built-in data set.

The files come from the Debian package ``dataset-fashion-mnist`` or from torchvision's
downloader; no code path needs a network. The idx format is parsed here (gzip or raw) so that a
truncated or foreign file fails with a message naming it instead of a numpy traceback.
"""
from __future__ import annotations

import argparse
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from langmim.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)

ENV_VAR = "LANGMIM_FASHION_MNIST"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/langmim").expanduser()

_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_LOADED: dict[tuple[str, Path], tuple[np.ndarray, np.ndarray]] = {}


def _idx_path(directory: Path, stem: str) -> Path | None:
    """The idx file ``stem`` in ``directory``, gzipped or unpacked, or None if absent."""
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_all_files(directory: Path) -> bool:
    return all(_idx_path(directory, stem) for pair in _FILES.values() for stem in pair)


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    """Directories to look in, in order.

    An explicit ``root`` or the environment variable is the only place searched, so that a
    wrong path is reported instead of silently replaced by another copy.
    """
    chosen = root if root is not None else os.environ.get(ENV_VAR)
    bases = [Path(chosen).expanduser()] if chosen else [SYSTEM_DIR, CACHE_DIR]
    # torchvision's downloader writes <root>/FashionMNIST/raw
    return [d for base in bases for d in (base, base / "FashionMNIST" / "raw")]


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Return the directory holding the four Fashion-MNIST idx files (``.gz`` or unpacked).

    Search order: ``root``; ``$LANGMIM_FASHION_MNIST``; /usr/share/datasets/fashion-mnist;
    ~/.cache/langmim (torchvision layout FashionMNIST/raw).
    """
    searched = _search_dirs(root)
    for directory in searched:
        if _has_all_files(directory):
            return directory
    places = ", ".join(str(d) for d in searched)
    raise DataError(
        f"Fashion-MNIST idx files (train/t10k images and labels) not found in: {places}; "
        "get them with `apt-get install dataset-fashion-mnist`, or "
        "`python -m langmim.data.fashion_mnist --download` (needs network), "
        "or point to a directory holding them with data.root=/path/to/dir"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one idx file of unsigned bytes (gzipped if its name ends in .gz)."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable idx file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated idx header, expected {ndim} dimension sizes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: idx file of shape {shape} should be {expected} bytes, found {len(raw)} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _check_ndim(path: Path, array: np.ndarray, ndim: int) -> None:
    """The last magic byte is the rank: 3 for an image file, 1 for a label file."""
    if array.ndim != ndim:
        raise DataError(f"{path}: expected an idx file with {ndim} dimension(s), "
                        f"found {array.ndim} (magic number 0x0000080{array.ndim:x})")


def load_fashion_mnist(
    split: str, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n, 28, 28), labels int64 (n,)) of split "train" or "test".

    Results are cached per process, since unpacking the 60k training images takes a while.
    """
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    directory = find_fashion_mnist(root)
    key = (split, directory.resolve())
    if key not in _LOADED:
        _LOADED[key] = _read_split(directory, split)
    return _LOADED[key]


def _read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_path, label_path = (_idx_path(directory, stem) for stem in _FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    _check_ndim(image_path, images, 3)
    _check_ndim(label_path, labels, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: expected 28x28 images, found {images.shape[1:]}")
    if len(images) != len(labels):
        raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images "
                        f"in {image_path}")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(f"{label_path}: labels must lie in 0..{len(CLASS_NAMES) - 1}")
    return images, labels.astype(np.int64)


def download(root: Path = CACHE_DIR) -> Path:
    """Fetch Fashion-MNIST with torchvision into ``root`` (needs network); return its directory."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return find_fashion_mnist(root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Locate or download Fashion-MNIST for langmim.")
    parser.add_argument("--download", action="store_true",
                        help=f"download with torchvision into {CACHE_DIR}")
    args = parser.parse_args(argv)
    print(download() if args.download else find_fashion_mnist())


if __name__ == "__main__":
    main()
