"""The scene sampler: which items a scene holds and where (a pure function of a seeded
generator), and the augmentations that keep its caption true (flip, small translation)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from langmim.errors import ConfigError

from .rendering import CENTRE, COLOURS, MAX_JITTER, POSITIONS, SIZES, PlacedItem

SPLIT_IDS = {"train": 0, "test": 1}  # the first seed word after the data seed: train- and test-split scenes never share draws
MAX_SHIFT = 3  # px, random translation when augmenting; small enough to keep positions true
CENTRED_PROB = 0.5  # chance that a single-item scene sits in the centre cell
PLAIN_COLOURS = ("white", "grey")  # tints of "plain" scenes, which look like Fashion-MNIST
_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


@dataclass(frozen=True)
class Scene:
    """A rendered scene; boxes are half-open pixel ranges x0 <= x < x1, y0 <= y < y1."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) int64, 0 = background, 1 + class; None unannotated
    boxes: np.ndarray | None  # (n, 4) int64 x0, y0, x1, y1; None unannotated
    caption: str
    positions: tuple[str, ...]


def randint(rng: np.random.Generator, high: int, size: int | tuple[int, ...] | None = None) -> Any:
    """Uniform integers in [0, high): one float draw each, several times faster than
    Generator.integers for the tiny draws a scene needs."""
    if size is None:
        return int(rng.random() * high)
    return (rng.random(size) * high).astype(np.int64)


def sample_items(
    rng: np.random.Generator, labels: np.ndarray, cum_probs: np.ndarray, plain_prob: float = 0.0
) -> list[PlacedItem]:
    """Draw the number of items, their distinct cells, sources, colours, sizes and jitters.

    `cum_probs` is the cumulative distribution of the item count (1, 2, ...), ending in 1.
    With probability `plain_prob` the scene is "plain": one white or grey item in the centre,
    where only the garment (and its size) tells captions apart. Colour and position are far
    easier cues than the garment, so without such scenes a short contrastive run learns
    hardly any garment words.
    """
    plain = rng.random() < plain_prob
    count = 1 if plain else 1 + int(np.searchsorted(cum_probs, rng.random(), side="right"))
    if plain or (count == 1 and rng.random() < CENTRED_PROB):
        cells = np.array([CENTRE])
    else:
        cells = rng.permutation(len(POSITIONS))[:count]
    sources = randint(rng, len(labels), count)
    palette = [list(COLOURS).index(c) for c in PLAIN_COLOURS] if plain else range(len(COLOURS))
    colours = np.array([palette[i] for i in randint(rng, len(palette), count)])
    sizes = randint(rng, len(SIZES), count)
    jitters = randint(rng, 2 * MAX_JITTER + 1, (count, 2)) - MAX_JITTER
    colour_names, size_names = list(COLOURS), list(SIZES)
    return [
        PlacedItem(source=int(s), label=int(labels[s]), colour=colour_names[c],
                   size=size_names[z], cell=int(cell), jitter=(int(j[0]), int(j[1])))
        for s, c, z, cell, j in zip(sources, colours, sizes, cells, jitters)
    ]


def _swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def hflip(scene: Scene) -> Scene:
    """Mirror image, mask and boxes, and swap "left"/"right" so the caption stays true."""
    if scene.mask is None:
        mask = boxes = None
    else:
        mask, boxes = scene.mask[:, ::-1], scene.boxes.copy()
        boxes[:, [0, 2]] = scene.image.shape[1] - scene.boxes[:, [2, 0]]
    return Scene(image=scene.image[:, ::-1], mask=mask, boxes=boxes,
                 caption=_swap_left_right(scene.caption),
                 positions=tuple(_swap_left_right(p) for p in scene.positions))


def _shift(array: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) px, filling the uncovered border with zeros (background)."""
    out = np.zeros_like(array)
    height, width = array.shape[:2]
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        array[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def translate(scene: Scene, dx: int, dy: int) -> Scene:
    if scene.mask is None:
        mask = boxes = None
    else:
        height, width = scene.mask.shape
        mask = _shift(scene.mask, dx, dy)
        boxes = np.clip(scene.boxes + [dx, dy, dx, dy], 0, [width, height, width, height])
    return Scene(image=_shift(scene.image, dx, dy), mask=mask, boxes=boxes,
                 caption=scene.caption, positions=scene.positions)


def cumulative_item_probs(item_probs: Sequence[float]) -> np.ndarray:
    """Validate the item-count weights; return their cumulative distribution."""
    probs = np.asarray(item_probs, dtype=np.float64)
    if probs.ndim != 1 or not 1 <= probs.size <= len(POSITIONS) or (probs < 0).any() \
            or probs.sum() <= 0:
        raise ConfigError(f"item_probs must be 1 to {len(POSITIONS)} non-negative weights for "
                          f"1, 2, ... items per scene, got {list(item_probs)}")
    cum = np.cumsum(probs / probs.sum())
    cum[-1] = 1.0  # no rounding gap above the last count
    return cum
