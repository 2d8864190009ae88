"""Distribution-shifted renders of Fashion-MNIST: the built-in data's ImageNet-Sketch / -V2 / -C.

Evaluation on plain images goes through `render_centred` (one large white item in the centre
cell). Each style here changes one thing about that render, so a drop in accuracy points at what
the model relies on:

- "sketch": only the item's outline, white on black (shape kept, fill and texture gone);
- "inverted": the centred render with every value inverted (a dark item on a white canvas);
- "small-offcentre": a small, coloured item in a non-centre cell with the training jitter, drawn
  by the training renderer itself (an in-distribution scene, just not the evaluation layout);
- "noisy": the centred render plus Gaussian pixel noise;
- "blurred": the centred render under a Gaussian blur.

A render is a pure function of (item, style, canvas, rng); `FashionMNISTShifted` seeds the rng
from (seed, style, item index), so every sample is reproducible.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from langmim.data.scenes import (
    CENTRE,
    COLOURS,
    ITEM_THRESHOLD,
    MAX_JITTER,
    PLAIN_COLOURS,
    POSITIONS,
    FashionMNISTCentred,
    PlacedItem,
    item_side,
    render_centred,
    render_scene,
    resize_item,
    to_chw,
)

__all__ = ["SHIFT_STYLES", "FashionMNISTShifted", "render_shifted"]

SHIFT_STYLES: tuple[str, ...] = ("sketch", "inverted", "small-offcentre", "noisy", "blurred")

REFERENCE_CANVAS = 64  # px; the pixel sizes below are for this canvas and scale with canvas / REFERENCE_CANVAS
SKETCH_LINE_PX = 1.0  # outline width: a thin pen line, as thin as the 28 px source allows at the large size
NOISE_SIGMA = 40.0  # std of the noise on 0..255, independent per pixel and channel: ImageNet-C Gaussian noise, severity ~2-3
BLUR_SIGMA_PX = 1.5  # Gaussian std: the stitching and small texture of a 32 px item go, its outline stays recognisable
BLUR_TRUNCATE = 3.0  # kernel radius in stds; the weight beyond is 0.3%
OFFCENTRE_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c not in PLAIN_COLOURS)  # tints the plain evaluation never shows
OFFCENTRE_CELLS: tuple[int, ...] = tuple(c for c in range(len(POSITIONS)) if c != CENTRE)  # anywhere but where evaluation puts items
OFFCENTRE_SIZE = "small"  # the training size that evaluation never uses


def _check_style(style: str) -> None:
    if style not in SHIFT_STYLES:
        raise ValueError(f"unknown shift style {style!r}; expected one of {', '.join(SHIFT_STYLES)}")


def _scaled(px: float, canvas: int) -> float:
    return px * canvas / REFERENCE_CANVAS


def _outline(silhouette: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a boolean silhouette within `width` 4-neighbour steps of its outside
    (the patch border counts as outside, so an item touching it still gets a closed outline)."""
    inner = silhouette
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                 & padded[1:-1, :-2] & padded[1:-1, 2:])
    return silhouette & ~inner


def _sketch(item: np.ndarray, canvas: int) -> np.ndarray:
    """The outline of the item's silhouette (where the resized item exceeds ITEM_THRESHOLD, the
    masks' definition of the item), drawn at full white where render_centred draws the item."""
    patch = resize_item(item, item_side("large", canvas))
    width = max(1, round(_scaled(SKETCH_LINE_PX, canvas)))
    outline = _outline(patch > ITEM_THRESHOLD * 255, width).astype(np.uint8) * 255
    placed = PlacedItem(source=0, label=0, colour="white", size="large", cell=CENTRE, jitter=(0, 0))
    return render_scene([placed], [outline], canvas, annotate=False)[0]


def _small_offcentre(item: np.ndarray, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """A small item in a random non-plain colour and non-centre cell, jittered as in training."""
    placed = PlacedItem(
        source=0, label=0, colour=OFFCENTRE_COLOURS[int(rng.integers(len(OFFCENTRE_COLOURS)))], size=OFFCENTRE_SIZE,
        cell=OFFCENTRE_CELLS[int(rng.integers(len(OFFCENTRE_CELLS)))],
        jitter=tuple(int(j) for j in rng.integers(-MAX_JITTER, MAX_JITTER + 1, size=2)),
    )
    return render_scene([placed], [resize_item(item, item_side(OFFCENTRE_SIZE, canvas))], canvas, annotate=False)[0]


def _noisy(item: np.ndarray, canvas: int, rng: np.random.Generator) -> np.ndarray:
    clean = render_centred(item, canvas).astype(np.float64)
    return np.clip(np.rint(clean + rng.normal(0.0, NOISE_SIGMA, size=clean.shape)), 0, 255).astype(np.uint8)


@functools.cache
def _blur_matrix(canvas: int) -> np.ndarray:
    """(canvas, canvas) matrix B with B @ x the 1-d Gaussian blur of x, zero outside the canvas
    (the canvas border is background, so this is the blur of the scene on an unbounded black field)."""
    sigma = _scaled(BLUR_SIGMA_PX, canvas)
    radius = math.ceil(BLUR_TRUNCATE * sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    distance = np.arange(canvas)[None, :] - np.arange(canvas)[:, None]
    matrix = np.where(np.abs(distance) <= radius, kernel[np.clip(distance + radius, 0, 2 * radius)], 0.0)
    matrix.flags.writeable = False
    return matrix


def _blurred(item: np.ndarray, canvas: int) -> np.ndarray:
    clean = render_centred(item, canvas).transpose(2, 0, 1).astype(np.float64, order="C")  # contiguous, so matmul uses BLAS
    blur = _blur_matrix(canvas)
    out = blur @ clean @ blur.T  # separable: columns, then rows, each channel
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def render_shifted(item: np.ndarray, style: str, canvas: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render a uint8 (H, W) Fashion-MNIST item in a shifted `style`; returns uint8 (canvas, canvas, 3).

    Only "small-offcentre" and "noisy" draw from `rng`; None means np.random.default_rng(0), so
    the result is always deterministic.
    """
    _check_style(style)
    if item.dtype != np.uint8 or item.ndim != 2:
        raise ValueError(f"render_shifted needs a uint8 (H, W) image, got {item.dtype} {tuple(item.shape)}")
    rng = np.random.default_rng(0) if rng is None else rng
    if style == "sketch":
        return _sketch(item, canvas)
    if style == "inverted":
        return 255 - render_centred(item, canvas)
    if style == "small-offcentre":
        return _small_offcentre(item, canvas, rng)
    if style == "noisy":
        return _noisy(item, canvas, rng)
    return _blurred(item, canvas)


class FashionMNISTShifted(FashionMNISTCentred):
    """Fashion-MNIST items rendered by `render_shifted` in one style; yields (uint8 (3,H,W), label).

    Sample i is a pure function of (split, style, seed, item index): its rng is
    np.random.default_rng([seed, style id, item index]), so a subset (`indices`) renders each
    item exactly as the full set does.
    """

    def __init__(
        self,
        split: str,
        style: str,
        canvas: int = 64,
        indices: Sequence[int] | np.ndarray | None = None,
        root: str | None = None,
        seed: int = 0,
    ) -> None:
        _check_style(style)
        super().__init__(split, canvas, indices, root)
        self.style, self.seed = style, seed

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        source = int(self.indices[i])
        rng = np.random.default_rng([self.seed, SHIFT_STYLES.index(self.style), source])
        image = render_shifted(self.images[source], self.style, self.canvas, rng)
        return to_chw(image), int(self.labels[i])
