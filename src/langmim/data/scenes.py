"""The built-in data set "fashion-scenes": real Fashion-MNIST items composed into captioned scenes.

Each scene is a black canvas (64x64 RGB by default) holding 1 to 3 Fashion-MNIST items, each
scaled to a named size, tinted with a named colour and placed in a named cell of a 3x3 grid. A
generated caption describes them ("a small red sneaker in the top left next to a blue bag on the
right."), so that language carries more than a class label. Every scene comes with an exact
per-pixel class mask and per-item boxes, and is a pure function of (split, seed, index):
training scenes use only the train split's items, evaluation scenes only the test split's.

Occlusion order: items are drawn in the order the caption first names them, each later item on
top. An item is opaque wherever its (resized) intensity is non-zero; the mask holds
1 + class of the topmost item at a pixel where that item's intensity exceeds ITEM_THRESHOLD,
and 0 (background) elsewhere.

Plain Fashion-MNIST images are evaluated through `render_centred`, which pastes an item exactly
as a training scene with one large white item in the centre cell (and no jitter) looks.
"""
from __future__ import annotations

import functools
import math
import operator
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from langmim.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from langmim.errors import ConfigError, DataError
from langmim.transforms import fix_articles

__all__ = [
    "CLASS_NAMES", "COLOURS", "SIZES", "POSITIONS", "NOUNS", "CAPTION_TEMPLATES",
    "ITEM_THRESHOLD", "EVAL_SCENE_SEED", "FashionScenes", "FashionMNISTCentred", "collate_scenes", "render_centred",
]

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
MAX_SHIFT = 3  # px, random translation when augmenting; small enough to keep positions true
CENTRED_PROB = 0.5  # chance that a single-item scene sits in the centre cell
PLAIN_COLOURS = ("white", "grey")  # tints of "plain" scenes, which look like Fashion-MNIST
PATCH_CACHE_BYTES = 256 * 2**20  # resized items kept per process: the 64 px train split needs 90 MB
_PIL_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling: 32 - 8 - 2 bits

NOUNS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "tee", "t shirt"),
    ("trouser", "trousers", "pants"),
    ("pullover", "sweater", "jumper"),
    ("dress", "gown"),
    ("coat", "jacket"),
    ("sandal", "sandals"),
    ("shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot"),
)  # per class: the canonical CLASS_NAMES name first, then synonyms
_PLURAL_NOUNS = frozenset({"trousers", "pants", "sandals"})  # take "a pair of"
CANONICAL_NOUN_PROB = 0.5
SIZE_WORD_PROB = 0.5

_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "at the top left", "in the top left corner"),
    "top": ("at the top", "in the top middle"),
    "top right": ("in the top right", "at the top right", "in the top right corner"),
    "left": ("on the left", "at the left"),
    "centre": ("in the centre", "in the middle"),
    "right": ("on the right", "at the right"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom", "in the bottom middle"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the bottom right corner"),
}
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {items}.",
    "{items}.",
    "an image showing {items}.",
    "there is {items}.",
    "a picture with {items}.",
    "a scene with {items}.",
    "a black background with {items}.",
)
EVAL_SCENE_SEED = 1  # held-out scenes are drawn from test-split items with their own seed
_SPLIT_IDS = {"train": 0, "test": 1}
_SCENE_LENGTHS = {"train": 60000, "test": 10000}
_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


@dataclass(frozen=True)
class PlacedItem:
    """One item of a scene: which Fashion-MNIST image, and how it is drawn."""

    source: int  # index into the split's Fashion-MNIST arrays
    label: int
    colour: str
    size: str
    cell: int  # index into POSITIONS
    jitter: tuple[int, int]  # (dx, dy) px from the cell centre


@dataclass(frozen=True)
class Scene:
    """A rendered scene; boxes are half-open pixel ranges x0 <= x < x1, y0 <= y < y1."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) int64, 0 = background, 1 + class; None unannotated
    boxes: np.ndarray | None  # (n, 4) int64 x0, y0, x1, y1; None unannotated
    caption: str
    positions: tuple[str, ...]


# ---------------------------------------------------------------- rendering


def _side(size: str, canvas: int) -> int:
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
    `_resize_items` reproduces Image.resize(BILINEAR) to the bit; the tests compare the two.
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


def _resize_items(items: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of uint8 (n, H, W) items to (n, side, side), equal to PIL's per-item
    Image.resize(BILINEAR): rows first, rounded to uint8, then columns. A block of items takes two
    matrix products (exact in float64: every sum is an integer below 2**31), 2-12x cheaper per
    item than a call into PIL (benchmarks/resize_blocks.py). The weights are non-negative and sum to one (in fixed point), so no
    value leaves 0..255 and truncating to uint8 is Pillow's rounding shift."""
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


def _block_items(side: int) -> int:
    """Items resized together: about 256 KB of output (256 items of the 64 px canvas's large size,
    20 at 224 px), enough to spread the per-call overhead, few enough that a block at 224 px,
    where the cache cannot hold the split, stays cheap."""
    return max(1, 2**18 // side**2)


def _resize(item: np.ndarray, side: int) -> np.ndarray:
    """One uint8 (H, W) item resized to side x side (see `_resize_items`)."""
    return _resize_items(item[None], side)[0]


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
    tinted = _COLOUR_TABLES[placed.colour].take(patch, axis=0)  # take: 4x faster than [patch]
    np.copyto(image[region], tinted, where=covered[..., None])
    if mask is None:
        return None
    np.copyto(mask[region], (patch > ITEM_THRESHOLD * 255) * (1 + placed.label), where=covered)
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size == 0:
        return np.array([x0, y0, x0, y0], dtype=np.int64)
    return np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1],
                    dtype=np.int64)


def _render_scene(
    items: Sequence[PlacedItem], patches: Sequence[np.ndarray], canvas: int, annotate: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Draw items (each with its patch resized by `_resize`) in order, later on top.

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
    return _render_scene([placed], [_resize(item, _side("large", canvas))], canvas)[0]


# ---------------------------------------------------------------- captions


def _randint(rng: np.random.Generator, high: int, size: int | tuple[int, ...] | None = None) -> Any:
    """Uniform integers in [0, high): one float draw each, several times faster than
    Generator.integers for the tiny draws a scene needs."""
    if size is None:
        return int(rng.random() * high)
    return (rng.random(size) * high).astype(np.int64)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[_randint(rng, len(options))]


def _noun(label: int, rng: np.random.Generator) -> str:
    canonical, *synonyms = NOUNS[label]
    return canonical if rng.random() < CANONICAL_NOUN_PROB else _pick(synonyms, rng)


def item_phrase(noun: str, colour: str, position_phrase: str, size: str | None = None) -> str:
    """E.g. "a small red sneaker in the top left"; articles are fixed later."""
    article = "a pair of" if noun in _PLURAL_NOUNS else "a"
    return f"{article} {size + ' ' if size else ''}{colour} {noun} {position_phrase}"


def _item_phrase(item: PlacedItem, rng: np.random.Generator) -> str:
    """One item in words, with the size word, noun and position phrase drawn at random."""
    size = item.size if rng.random() < SIZE_WORD_PROB else None
    noun = _noun(item.label, rng)
    return item_phrase(noun, item.colour, _pick(_POSITION_PHRASES[POSITIONS[item.cell]], rng), size)


def _relations(cell_a: int, cell_b: int) -> list[str]:
    """Words true of item a relative to item b (always including the neutral "and")."""
    (row_a, col_a), (row_b, col_b) = divmod(cell_a, 3), divmod(cell_b, 3)
    words = ["and"]
    if row_a == row_b and abs(col_a - col_b) == 1:
        words.append("next to")
    if row_a != row_b:
        words.append("above" if row_a < row_b else "below")
    if col_a != col_b:
        words.append("to the left of" if col_a < col_b else "to the right of")
    return words


def _join(phrases: list[str], relation: str) -> str:
    """"A rel B" / "A rel B, and C" / "A and B" / "A, B and C"."""
    if relation == "and" or len(phrases) == 1:
        units = phrases
    else:
        units = [f"{phrases[0]} {relation} {phrases[1]}", *phrases[2:]]
    if len(units) == 1:
        return units[0]
    last = ", and " if relation != "and" else " and "
    return ", ".join(units[:-1]) + last + units[-1]


def _caption(items: Sequence[PlacedItem], rng: np.random.Generator) -> str:
    template = _pick(CAPTION_TEMPLATES, rng)
    phrases = [_item_phrase(item, rng) for item in items]
    relation = _pick(_relations(items[0].cell, items[1].cell), rng) if len(items) > 1 else "and"
    return fix_articles(template.format(items=_join(phrases, relation)))


# ---------------------------------------------------------------- sampling and augmentation


def _sample_items(
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
    sources = _randint(rng, len(labels), count)
    palette = [list(COLOURS).index(c) for c in PLAIN_COLOURS] if plain else range(len(COLOURS))
    colours = np.array([palette[i] for i in _randint(rng, len(palette), count)])
    sizes = _randint(rng, len(SIZES), count)
    jitters = _randint(rng, 2 * MAX_JITTER + 1, (count, 2)) - MAX_JITTER
    colour_names, size_names = list(COLOURS), list(SIZES)
    return [
        PlacedItem(source=int(s), label=int(labels[s]), colour=colour_names[c],
                   size=size_names[z], cell=int(cell), jitter=(int(j[0]), int(j[1])))
        for s, c, z, cell, j in zip(sources, colours, sizes, cells, jitters)
    ]


def _swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def _hflip(scene: Scene) -> Scene:
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


def _translate(scene: Scene, dx: int, dy: int) -> Scene:
    if scene.mask is None:
        mask = boxes = None
    else:
        height, width = scene.mask.shape
        mask = _shift(scene.mask, dx, dy)
        boxes = np.clip(scene.boxes + [dx, dy, dx, dy], 0, [width, height, width, height])
    return Scene(image=_shift(scene.image, dx, dy), mask=mask, boxes=boxes,
                 caption=scene.caption, positions=scene.positions)


# ---------------------------------------------------------------- data sets


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _cumulative_item_probs(item_probs: Sequence[float]) -> np.ndarray:
    """Validate the item-count weights; return their cumulative distribution."""
    probs = np.asarray(item_probs, dtype=np.float64)
    if probs.ndim != 1 or not 1 <= probs.size <= len(POSITIONS) or (probs < 0).any() \
            or probs.sum() <= 0:
        raise ConfigError(f"item_probs must be 1 to {len(POSITIONS)} non-negative weights for "
                          f"1, 2, ... items per scene, got {list(item_probs)}")
    cum = np.cumsum(probs / probs.sum())
    cum[-1] = 1.0  # no rounding gap above the last count
    return cum


class FashionScenes(Dataset):
    """Captioned Fashion-MNIST scenes, a deterministic procedural stream.

    A share `plain_prob` of scenes are "plain": one white or grey item in the centre cell, the
    look of Fashion-MNIST itself. Sample i is a pure function of (split, seed, i); any non-negative i is valid (training
    indexes by global sample number), `length` only sets what `len()` reports. With `augment`,
    a horizontal flip (p=0.5; swaps left/right in the caption) and a translation of at most
    MAX_SHIFT px are applied on top of the very same scene. With `annotate=False` a sample is
    only its image, caption and index (the same image and caption): what pre-training needs,
    at about two thirds of the cost.
    """

    def __init__(
        self,
        split: str = "train",
        canvas: int = 64,
        seed: int = 0,
        length: int | None = None,
        augment: bool = False,
        item_probs: Sequence[float] = (0.5, 0.3, 0.2),
        root: str | None = None,
        plain_prob: float = 0.0,
        annotate: bool = True,
    ) -> None:
        if canvas < 16:
            raise ConfigError(f"scene canvas must be at least 16 px, got {canvas}")
        self.images, self.labels = load_fashion_mnist(split, root)
        self.split, self.canvas, self.seed, self.augment = split, canvas, seed, augment
        self.annotate = annotate
        self.cum_item_probs = _cumulative_item_probs(item_probs)
        if not 0.0 <= plain_prob <= 1.0:
            raise ConfigError(f"plain_prob must be in [0, 1], got {plain_prob}")
        self.plain_prob = plain_prob
        self.length = _SCENE_LENGTHS[split] if length is None else length
        self._patch_blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._patch_bytes = 0

    def _patch(self, source: int, side: int) -> np.ndarray:
        """Item `source` resized to side x side. Items are resized a block at a time and the
        blocks kept, the least recently used dropped beyond PATCH_CACHE_BYTES (at 224 px the whole
        train split would take 1.1 GB): resizing was the costliest step of a scene."""
        items = _block_items(side)
        block, offset = divmod(source, items)
        key = (side, block)
        resized = self._patch_blocks.get(key)
        if resized is not None:
            self._patch_blocks.move_to_end(key)
            return resized[offset]
        resized = self._patch_blocks[key] = _resize_items(self.images[block * items:(block + 1) * items], side)
        self._patch_bytes += resized.nbytes
        while self._patch_bytes > PATCH_CACHE_BYTES:
            self._patch_bytes -= self._patch_blocks.popitem(last=False)[1].nbytes
        return resized[offset]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Scene `index`: "image" uint8 (3,H,W), "caption", "mask" int64 (H,W), "index", and per
        item (in drawing order) "labels", "boxes" (n,4), "item_indices" (into the split),
        "colours", "sizes", "positions"; "flipped" and "shift" record the augmentation."""
        return self.render(index)

    def render(self, index: int, visit_rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Scene `index` as `__getitem__` gives it; with `visit_rng` its flip and shift are drawn
        from that generator instead of the scene's own, so one scene seen again (a fixed data set
        visited in epochs) is augmented afresh while its layout and caption stay its own."""
        index = operator.index(index)
        if index < 0:
            raise IndexError(f"scene index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        items = _sample_items(rng, self.labels, self.cum_item_probs, self.plain_prob)
        patches = [self._patch(it.source, _side(it.size, self.canvas)) for it in items]
        image, mask, boxes = _render_scene(items, patches, self.canvas, self.annotate)
        scene = Scene(image, mask, boxes, _caption(items, rng),
                      tuple(POSITIONS[it.cell] for it in items))
        flipped, shift = False, (0, 0)
        if self.augment:  # drawn after the scene, so augmented scenes differ only by these
            augment_rng = rng if visit_rng is None else visit_rng
            flipped = bool(augment_rng.random() < 0.5)
            shift = tuple(int(s) - MAX_SHIFT for s in _randint(augment_rng, 2 * MAX_SHIFT + 1, 2))
            scene = _translate(_hflip(scene) if flipped else scene, *shift)
        sample = {"image": _to_chw(scene.image), "caption": scene.caption, "index": index}
        if not self.annotate:
            return sample
        return {
            **sample,
            "mask": torch.from_numpy(np.ascontiguousarray(scene.mask)),
            "labels": torch.from_numpy(np.array([it.label for it in items], dtype=np.int64)),
            "boxes": torch.from_numpy(scene.boxes),
            "item_indices": torch.from_numpy(np.array([it.source for it in items],
                                                      dtype=np.int64)),
            "colours": [it.colour for it in items],
            "sizes": [it.size for it in items],
            "positions": list(scene.positions),
            "flipped": flipped,
            "shift": shift,
        }


def collate_scenes(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, masks and indices; keep captions and per-item fields as lists."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }
    for key in samples[0]:
        batch.setdefault(key, [s[key] for s in samples])
    return batch


class FashionMNISTCentred(Dataset):
    """Plain Fashion-MNIST images rendered by `render_centred`; yields (uint8 (3,H,W), label)."""

    def __init__(
        self,
        split: str,
        canvas: int = 64,
        indices: Sequence[int] | np.ndarray | None = None,
        root: str | None = None,
    ) -> None:
        self.images, labels = load_fashion_mnist(split, root)
        n = len(labels)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise DataError(f"Fashion-MNIST {split} indices must lie in 0..{n - 1}")
        self.labels = labels[self.indices]
        self.canvas = canvas

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = render_centred(self.images[self.indices[i]], self.canvas)
        return _to_chw(image), int(self.labels[i])
