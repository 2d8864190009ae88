"""The web-like world (`data.world=web`): cluttered, long-tailed scenes with partial and noisy captions.

The clean world is the regime where plain CLIP wins by construction: every caption exhaustive and
true, every concept equally common, every item alone on black. The web world keeps its
Fashion-MNIST items, palette and Pillow-exact resizing, but is built like a web crawl:

- clutter: 2 to 6 items of continuous sizes at free positions, overlapping (later drawn = in front),
  on a dark gradient or texture, among distractor shapes that no caption or mask holds;
- long tail: each item's garment x colour concept is drawn from a Zipf law over a fixed rank order
  (uniform on test-split scenes, so that head and tail concepts are measured alike);
- coverage, language, mismatch and boilerplate: see `web_captions`.

A scene is a pure function of (split items, world, split, seed, index, canvas). Its layout and caption
are drawn before anything is painted, so `web_pair` gives them without rendering.
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from langmim.data.fashion_mnist import CLASS_NAMES
from langmim.errors import DataError
from langmim.worlds import NUM_CONCEPTS, WebWorld

from .rendering import _COLOUR_TABLES, COLOURS, ITEM_THRESHOLD, resize_item, resize_items
from .sampler import SPLIT_IDS, randint
from .web_captions import Mention, boilerplate, own_caption
from .web_items import WebItem

WORLD_TAG = 0x57EB  # the last seed word of every web scene: no web scene shares a generator with a clean one
CONCEPT_ORDER_SEED = 20240405  # fixes which garment x colour concepts are common in pre-training
assert NUM_CONCEPTS == len(CLASS_NAMES) * len(COLOURS)  # concept = label * len(COLOURS) + colour index
DARK = 60  # the brightest channel value of a background
MIN_VISIBLE = 0.3  # least share of an item's own mask pixels that the items in front of it leave visible...
PLACEMENT_TRIES = 8  # ...within this many positions drawn for the newer item (else the best of them is kept)
NOISE_GRID = 5  # value noise: random values on a NOISE_GRID x NOISE_GRID grid, bilinearly upsampled
_SOURCE_BATCH = 32  # candidates drawn at once when picking an item of a given class
_SOURCE_TRIES = 64
PatchFn = Callable[[int, int], np.ndarray]  # (source index, side) -> uint8 (side, side) resized item


@functools.cache
def concept_rank_order() -> np.ndarray:
    """Concept ids from the most to the least frequent in pre-training: a fixed permutation."""
    order = np.random.default_rng(CONCEPT_ORDER_SEED).permutation(NUM_CONCEPTS)
    order.flags.writeable = False
    return order


def concept_frequencies(world: WebWorld) -> np.ndarray:
    """(NUM_CONCEPTS,) pre-training probability of each concept id: rank r (from 1) has weight r**-zipf_exponent."""
    weights = np.arange(1, NUM_CONCEPTS + 1, dtype=np.float64) ** -float(world.zipf_exponent)
    frequencies = np.empty(NUM_CONCEPTS)
    frequencies[concept_rank_order()] = weights / weights.sum()
    return frequencies


def head_tail_concepts(world: WebWorld) -> tuple[np.ndarray, np.ndarray]:
    """Concept ids of the `head_concepts` most and the `tail_concepts` least frequent in pre-training."""
    order = concept_rank_order()
    return order[:world.head_concepts].copy(), order[NUM_CONCEPTS - world.tail_concepts:].copy()


def _cumulative_concepts(world: WebWorld, uniform: bool) -> np.ndarray:
    return _cumulative(uniform, world.zipf_exponent)


@functools.cache  # keyed by values: a WebWorld is a mutable config section
def _cumulative(uniform: bool, zipf_exponent: float) -> np.ndarray:
    probs = np.full(NUM_CONCEPTS, 1 / NUM_CONCEPTS) if uniform else concept_frequencies(WebWorld(zipf_exponent=zipf_exponent))
    cum = np.cumsum(probs)
    cum[-1] = 1.0
    return cum


@dataclass(frozen=True)
class Backdrop:
    """What lies behind the items: drawn in the layout, painted only when rendering."""

    textured: bool
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]  # two dark colours blended across the canvas
    distractors: int
    seed: int  # the texture's and the distractors' geometry


@dataclass(frozen=True)
class WebPair:
    """A web scene drawn but not painted: its items, backdrop and pre-training caption."""

    items: tuple[WebItem, ...]  # drawing order
    caption: str
    kind: str  # "own", "mismatch" (another scene's own caption) or "boilerplate"
    mentions: tuple[Mention, ...]  # what the scene's own caption names (drawn for every scene)
    backdrop: Backdrop
    patches: tuple[np.ndarray, ...]  # the resized items, drawing order
    owner: np.ndarray  # (H, W) int64: the item whose mask pixel it is (front-most, above ITEM_THRESHOLD), else -1


@dataclass(frozen=True)
class WebScene:
    """A rendered web scene; boxes are half-open pixel ranges of each item's mask pixels."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) int64: 0 background or distractor, 1 + class of the front-most item
    boxes: np.ndarray  # (n, 4) int64 x0, y0, x1, y1, drawing order; empty at the item's corner if hidden
    caption: str
    kind: str
    items: tuple[WebItem, ...]


def _source_of_class(rng: np.random.Generator, labels: np.ndarray, label: int) -> int:
    """A uniform draw among the split's items of class `label`: candidates are drawn from the whole
    split until one has that class, which needs no per-class index."""
    for _ in range(_SOURCE_TRIES):
        candidates = randint(rng, len(labels), _SOURCE_BATCH)
        hits = candidates[labels[candidates] == label]
        if hits.size:
            return int(hits[0])
    raise DataError(f"the Fashion-MNIST split holds (almost) no items of class {label} ({CLASS_NAMES[label]})")


def _place(rng: np.random.Generator, patches: list[np.ndarray], canvas: int) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Draw each item's corner uniformly among those keeping it inside the canvas, redrawing (up to
    PLACEMENT_TRIES times) one that would leave an earlier item under MIN_VISIBLE of its pixels.
    Returns the corners, the item owning each mask pixel (-1 none) and each item's count of them."""
    top = np.full((canvas, canvas), -1, dtype=np.int64)
    solid = np.zeros((canvas, canvas), dtype=bool)  # the front-most item is above ITEM_THRESHOLD there
    visible, full, corners = np.zeros(0, dtype=np.int64), [], []
    for k, patch in enumerate(patches):
        side = patch.shape[0]
        covered, above = patch > 0, patch > ITEM_THRESHOLD * 255
        best: tuple[float, int, int, np.ndarray] | None = None
        for _ in range(PLACEMENT_TRIES):
            x0, y0 = (int(v) for v in randint(rng, canvas - side + 1, 2))
            region = (slice(y0, y0 + side), slice(x0, x0 + side))
            lost = np.bincount(top[region][covered & solid[region]], minlength=k)
            left = float(np.min((visible - lost) / np.maximum(full, 1))) if k else 1.0
            if best is None or left > best[0]:
                best = (left, x0, y0, lost)
            if left >= MIN_VISIBLE:
                break
        _, x0, y0, lost = best
        region = (slice(y0, y0 + side), slice(x0, x0 + side))
        np.copyto(top[region], k, where=covered)
        np.copyto(solid[region], above, where=covered)
        visible = np.append(visible - lost, above.sum())
        full.append(above.sum())
        corners.append((x0, y0))
    return corners, np.where(solid, top, -1), visible


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    index = operator.index(index)
    if index < 0:
        raise IndexError(f"scene index must be non-negative, got {index}")
    return np.random.default_rng([seed, SPLIT_IDS[split], index, WORLD_TAG])


def _draw(labels: np.ndarray, world: WebWorld, split: str, rng: np.random.Generator, canvas: int,
          patch: PatchFn) -> tuple[list[WebItem], list[np.ndarray], np.ndarray, Backdrop]:
    """The items (with corners, visibility and cells), their patches, the owner map and the backdrop."""
    count = world.min_items + randint(rng, world.max_items - world.min_items + 1)
    cum = _cumulative_concepts(world, split == "test" and world.eval_uniform_concepts)
    concepts = np.minimum(np.searchsorted(cum, rng.random(count), side="right"), NUM_CONCEPTS - 1)
    scales = world.min_scale + (world.max_scale - world.min_scale) * rng.random(count)
    labels_of, colours = np.divmod(concepts, len(COLOURS))
    sources = [_source_of_class(rng, labels, int(label)) for label in labels_of]
    patches = [patch(s, max(1, round(z * canvas))) for s, z in zip(sources, scales)]
    corners, owner, visible = _place(rng, patches, canvas)
    items = []
    for order, (source, label, colour, scale, p, (x0, y0), area) in enumerate(
            zip(sources, labels_of, colours, scales, patches, corners, visible)):
        side = p.shape[0]
        row, col = (min(int(3 * (v + side / 2) / canvas), 2) for v in (y0, x0))
        items.append(WebItem(source=source, label=int(label), colour=list(COLOURS)[colour], scale=float(scale),
                             size="large" if scale >= world.size_threshold else "small", x0=x0, y0=y0, side=side,
                             order=order, area=int(area), cell=3 * row + col))
    dark = (rng.random(6) * (DARK + 1)).astype(int)
    backdrop = Backdrop(textured=bool(rng.random() < world.textured_background),
                        colours=(tuple(dark[:3].tolist()), tuple(dark[3:].tolist())),
                        distractors=randint(rng, world.max_distractors + 1), seed=randint(rng, 2**32))
    return items, patches, owner, backdrop


def _resizer(images: np.ndarray) -> PatchFn:
    return lambda source, side: resize_item(images[source], side)


def _own(images: np.ndarray, labels: np.ndarray, world: WebWorld, split: str, seed: int, index: int, canvas: int,
         patch: PatchFn | None) -> tuple[np.random.Generator, WebPair]:
    """Scene `index` drawn with its own caption, and its generator after that."""
    rng = _scene_rng(seed, split, index)
    items, patches, owner, backdrop = _draw(labels, world, split, rng, canvas, patch or _resizer(images))
    caption, mentions = own_caption(items, world, canvas, rng)
    named = {m.order for m in mentions}
    return rng, WebPair(items=tuple(replace(it, named=it.order in named) for it in items), caption=caption, kind="own",
                        mentions=mentions, backdrop=backdrop, patches=tuple(patches), owner=owner)


def web_pair(images: np.ndarray, labels: np.ndarray, world: WebWorld, split: str, seed: int, index: int,
             canvas: int = 64, patch: PatchFn | None = None) -> WebPair:
    """Scene `index`'s layout and pre-training caption, without painting it. One draw decides the
    caption: boilerplate (boilerplate_share), another scene's own caption (mismatch_share; that
    scene's items and caption are drawn, not its image) or the scene's own. `patch` (source, side)
    may serve resized items from a cache; by default each is resized afresh."""
    rng, pair = _own(images, labels, world, split, seed, index, canvas, patch)
    draw = rng.random()
    if draw < world.boilerplate_share:
        caption, kind = boilerplate(rng), "boilerplate"
    elif draw < world.boilerplate_share + world.mismatch_share:
        other = randint(rng, 2**31 - 1)
        other += other >= index  # any scene but this one
        caption, kind = _own(images, labels, world, split, seed, other, canvas, patch)[1].caption, "mismatch"
    else:
        return pair
    return replace(pair, caption=caption, kind=kind, items=tuple(replace(it, named=False) for it in pair.items))


def _field(rng: np.random.Generator, textured: bool, canvas: int) -> np.ndarray:
    """(H, W) in [0, 1]: a linear ramp in a random direction, or a texture (value noise or stripes)."""
    y, x = np.mgrid[0:canvas, 0:canvas] / max(canvas - 1, 1)
    angle = rng.random() * 2 * math.pi
    along = x * math.cos(angle) + y * math.sin(angle)
    if not textured:
        return (along - along.min()) / max(np.ptp(along), 1e-9)
    if rng.random() < 0.5:
        grid = (rng.random((1, NOISE_GRID, NOISE_GRID)) * 256).astype(np.uint8)
        return resize_items(grid, canvas)[0] / 255
    period = 0.06 + 0.14 * rng.random()  # of the canvas
    return 0.5 + 0.5 * np.sin(2 * math.pi * along / period + 2 * math.pi * rng.random())


def _paint_distractors(image: Image.Image, count: int, rng: np.random.Generator) -> None:
    """Filled circles, rectangles or lines in random colours (drawn behind the items)."""
    draw, canvas = ImageDraw.Draw(image), image.width
    for _ in range(count):
        kind = randint(rng, 3)
        colour = tuple((40 + rng.random(3) * 216).astype(int).tolist())
        x, y = rng.random(2) * canvas
        if kind == 0:
            r = canvas * (0.04 + 0.1 * rng.random())
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif kind == 1:
            w, h = canvas * (0.08 + 0.25 * rng.random(2))
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        else:
            x1, y1 = rng.random(2) * canvas
            draw.line((x, y, x1, y1), fill=colour, width=1 + randint(rng, max(1, canvas // 32)))


def render_web(pair: WebPair, canvas: int = 64) -> WebScene:
    """Paint a drawn scene: backdrop, distractors, then items back to front; mask and boxes from
    the owner map (so distractors never enter them)."""
    rng = np.random.default_rng(pair.backdrop.seed)
    low, high = (np.asarray(c, dtype=np.float64) for c in pair.backdrop.colours)
    t = _field(rng, pair.backdrop.textured, canvas)[..., None]
    backdrop = Image.fromarray(np.rint(low + (high - low) * t).astype(np.uint8))
    _paint_distractors(backdrop, pair.backdrop.distractors, rng)
    image = np.array(backdrop)
    for item, patch in zip(pair.items, pair.patches):
        region = (slice(item.y0, item.y0 + item.side), slice(item.x0, item.x0 + item.side))
        np.copyto(image[region], _COLOUR_TABLES[item.colour].take(patch, axis=0), where=(patch > 0)[..., None])
    labels = np.array([1 + it.label for it in pair.items], dtype=np.int64)
    mask = np.where(pair.owner >= 0, labels[pair.owner], 0)
    return WebScene(image=image, mask=mask, boxes=_boxes(pair.owner, pair.items), caption=pair.caption, kind=pair.kind,
                    items=pair.items)


def _boxes(owner: np.ndarray, items: tuple[WebItem, ...]) -> np.ndarray:
    boxes = np.empty((len(items), 4), dtype=np.int64)
    for i, item in enumerate(items):
        mine = owner == i
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) if rows.size else (item.x0, item.y0, item.x0, item.y0)
    return boxes


def web_scene(images: np.ndarray, labels: np.ndarray, world: WebWorld, split: str, seed: int, index: int,
              canvas: int = 64, patch: PatchFn | None = None) -> WebScene:
    """Scene `index` of the web world, rendered: a pure function of its arguments."""
    return render_web(web_pair(images, labels, world, split, seed, index, canvas, patch), canvas)
