"""Drawing scenes: the palette, sizes and grid cells of items, Pillow-exact bilinear resizing of
Fashion-MNIST items, and pasting them onto a black canvas with their mask and box.

Occlusion order: items are drawn in the order the caption first names them, each later item on
top. An item is opaque wherever
its (resized) intensity is non-zero; the mask holds 1 + class of the topmost item at a pixel
where that item's intensity exceeds ITEM_THRESHOLD, and 0 (background) elsewhere.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (250, 230, 30),
    "orange": (255, 140, 0),
    "purple": (160, 50, 220),
    "pink": (255, 110, 190),
    "cyan": (0, 220, 230),
    "white": (255, 255, 255),
    "grey": (150, 150, 150),
}
SIZES: dict[str, float] = {"small": 0.34, "large": 0.5}  # item side as a fraction of the canvas
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # row-major 3x3 grid
CENTRE = POSITIONS.index("centre")
ITEM_THRESHOLD = 0.15  # intensity above which a pixel belongs to an item in the mask
MAX_JITTER = 2  # px, random offset of an item from its cell centre
_PIL_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling: 32 - 8 - 2 bits


@dataclass(frozen=True)
class PlacedItem:
    """One item of a scene: which Fashion-MNIST image, and how it is drawn."""

    source: int  # index into the split's Fashion-MNIST arrays
    label: int
    colour: str
    size: str
    cell: int  # index into POSITIONS
    jitter: tuple[int, int]  # (dx, dy) px from the cell centre


def item_side(size: str, canvas: int) -> int:
    return round(SIZES[size] * canvas)


def _origin(cell: int, jitter: tuple[int, int], side: int, canvas: int) -> tuple[int, int]:
    """Top-left corner (x0, y0) of an item centred on its cell centre plus jitter, kept inside."""
    row, col = divmod(cell, 3)
    x0, y0 = (math.floor(canvas * (k + 1) / 4 - side / 2 + 0.5) + j
              for k, j in ((col, jitter[0]), (row, jitter[1])))
    return min(max(x0, 0), canvas - side), min(max(y0, 0), canvas - side)


@functools.cache
def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's bilinear resampling coefficients in its fixed point, (out_size, in_size) float64.

    Follows Pillow's Resample.c (precompute_coeffs, normalize_coeffs_8bpc) step by step, so that
    `resize_items` reproduces Image.resize(BILINEAR) to the bit; the tests compare the two.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)  # shrinking widens the triangle filter (support 1) to antialias
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        centre = (out + 0.5) * scale
        lo = max(int(centre - filter_scale + 0.5), 0)
        hi = min(int(centre + filter_scale + 0.5), in_size)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) * (1.0 / filter_scale)))
        weights[out, lo:hi] = taps / taps.sum()
    weights = np.trunc(0.5 + weights * (1 << _PIL_PRECISION_BITS))
    weights.flags.writeable = False
    return weights


def resize_items(items: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of uint8 (n, H, W) items to (n, side, side), equal to PIL's per-item
    Image.resize(BILINEAR): rows first, rounded to uint8, then columns. A block of items takes two
    matrix products (exact in float64: every sum is an integer below 2**31), cheaper per item
    than a call into PIL (measured by benchmarks/resize_blocks.py). The weights are non-negative
    and sum to one (in fixed point), so no value leaves 0..255 and truncating to uint8 is
    Pillow's rounding shift."""
    n, height, width = items.shape
    half, unit = float(1 << (_PIL_PRECISION_BITS - 1)), 1.0 / (1 << _PIL_PRECISION_BITS)
    rows = items.reshape(n * height, width).astype(np.float64) @ _bilinear_weights(width, side).T
    rows += half
    rows *= unit
    columns = rows.astype(np.uint8).reshape(n, height, side).transpose(1, 0, 2).reshape(height, n * side)
    both = _bilinear_weights(height, side) @ columns.astype(np.float64)  # one product for the block
    both += half
    both *= unit
    return np.ascontiguousarray(both.astype(np.uint8).reshape(side, n, side).transpose(1, 0, 2))


def block_items(side: int) -> int:
    """Items resized together: about 256 KB of output (256 items of the 64 px canvas's large size,
    20 at 224 px), enough to spread the per-call overhead, few enough that a block at 224 px,
    where the cache cannot hold the split, stays cheap."""
    return max(1, 2**18 // side**2)


def resize_item(item: np.ndarray, side: int) -> np.ndarray:
    """One uint8 (H, W) item resized to side x side (see `resize_items`)."""
    return resize_items(item[None], side)[0]


def _colour_table(rgb: tuple[int, int, int]) -> np.ndarray:
    """(256, 3) lookup: intensity v -> round(v / 255 * rgb); white maps v to itself."""
    v = np.arange(256, dtype=np.int64)[:, None]
    return ((v * np.asarray(rgb) + 127) // 255).astype(np.uint8)


_COLOUR_TABLES = {name: _colour_table(rgb) for name, rgb in COLOURS.items()}


def _paste(
    image: np.ndarray, mask: np.ndarray | None, patch: np.ndarray, placed: PlacedItem
) -> np.ndarray | None:
    """Draw one resized item over `image` (and `mask`, if given) in place; return its box
    (x0, y0, x1, y1), or None without a mask."""
    side = patch.shape[0]
    x0, y0 = _origin(placed.cell, placed.jitter, side, image.shape[0])
    covered = patch > 0
    region = (slice(y0, y0 + side), slice(x0, x0 + side))
    tinted = _COLOUR_TABLES[placed.colour].take(patch, axis=0)  # take: faster than fancy indexing
    np.copyto(image[region], tinted, where=covered[..., None])
    if mask is None:
        return None
    np.copyto(mask[region], (patch > ITEM_THRESHOLD * 255) * (1 + placed.label), where=covered)
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size == 0:
        return np.array([x0, y0, x0, y0], dtype=np.int64)
    return np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1],
                    dtype=np.int64)


def render_scene(
    items: Sequence[PlacedItem], patches: Sequence[np.ndarray], canvas: int, annotate: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Draw items (each with its patch resized by `resize_item`) in order, later on top.

    Returns image (H, W, 3) uint8, mask (H, W) int64 and boxes (n, 4) int64; mask and boxes
    are None without `annotate`.
    """
    image = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    mask = np.zeros((canvas, canvas), dtype=np.int64) if annotate else None
    boxes = [_paste(image, mask, patch, item) for item, patch in zip(items, patches)]
    return image, mask, np.stack(boxes).reshape(-1, 4) if annotate else None


def render_centred(item: np.ndarray, canvas: int = 64, colour: str = "white") -> np.ndarray:
    """Render a plain Fashion-MNIST image as a single large item in the centre cell.

    This is the one shared transform for evaluating on plain images: the result equals a
    training scene with one large item of `colour` in the centre cell and no jitter.
    Returns uint8 (canvas, canvas, 3).
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")
    if item.dtype != np.uint8 or item.ndim != 2:
        raise ValueError(f"render_centred needs a uint8 (H, W) image, got {item.dtype} "
                         f"{tuple(item.shape)}")
    placed = PlacedItem(source=0, label=0, colour=colour, size="large", cell=CENTRE,
                        jitter=(0, 0))
    return render_scene([placed], [resize_item(item, item_side("large", canvas))], canvas)[0]


def to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
