"""The scene data sets: FashionScenes (the captioned, annotated stream), its collate function,
and FashionMNISTCentred (plain Fashion-MNIST images rendered as centred scenes)."""
from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from langmim.data.fashion_mnist import load_fashion_mnist
from langmim.errors import ConfigError, DataError
from langmim.worlds import WebWorld

from .captions import caption_of
from .rendering import POSITIONS, block_items, item_side, render_centred, render_scene, resize_items, to_chw
from .sampler import MAX_SHIFT, SPLIT_IDS, Scene, cumulative_item_probs, hflip, randint, sample_items, translate
from .web import WORLD_TAG, web_scene
from .web_captions import truthful_caption

PATCH_CACHE_BYTES = 256 * 2**20  # resized items kept per process: the 64 px train split needs 90 MB
EVAL_SCENE_SEED = 1  # held-out scenes are drawn from test-split items with their own seed
AUGMENT_TAG = 1  # the last seed word of a web scene's flip: apart from the scene's own draws
_SCENE_LENGTHS = {"train": 60000, "test": 10000}


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
        world: WebWorld | None = None,
    ) -> None:
        if canvas < 16:
            raise ConfigError(f"scene canvas must be at least 16 px, got {canvas}")
        self.images, self.labels = load_fashion_mnist(split, root)
        self.split, self.canvas, self.seed, self.augment = split, canvas, seed, augment
        self.annotate, self.world = annotate, world
        self.cum_item_probs = cumulative_item_probs(item_probs)
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
        items = block_items(side)
        block, offset = divmod(source, items)
        key = (side, block)
        resized = self._patch_blocks.get(key)
        if resized is not None:
            self._patch_blocks.move_to_end(key)
            return resized[offset]
        resized = self._patch_blocks[key] = resize_items(self.images[block * items:(block + 1) * items], side)
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
        scene, items, rng = self._clean(index) if self.world is None else self._web(index)
        flipped, shift = False, (0, 0)
        if self.augment:  # drawn after the scene, so augmented scenes differ only by these
            augment_rng = rng if visit_rng is None else visit_rng
            flipped = bool(augment_rng.random() < 0.5)
            if self.world is None:  # a web scene's textured backdrop has no border to shift in
                shift = tuple(int(s) - MAX_SHIFT for s in randint(augment_rng, 2 * MAX_SHIFT + 1, 2))
            scene = translate(hflip(scene) if flipped else scene, *shift)
        sample = {"image": to_chw(scene.image), "caption": scene.caption, "index": index}
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

    def _clean(self, index: int) -> tuple[Scene, list, np.random.Generator]:
        """A clean-world scene, its items and its generator (after the scene's draws)."""
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])
        items = sample_items(rng, self.labels, self.cum_item_probs, self.plain_prob)
        patches = [self._patch(it.source, item_side(it.size, self.canvas)) for it in items]
        image, mask, boxes = render_scene(items, patches, self.canvas, self.annotate)
        return Scene(image, mask, boxes, caption_of(items, rng), tuple(POSITIONS[it.cell] for it in items)), items, rng

    def _web(self, index: int) -> tuple[Scene, tuple, np.random.Generator]:
        """A web-world scene, its items and a generator for its augmentation. Test-split scenes
        carry the exhaustive, true caption (evaluation keeps its meaning); training scenes their
        web caption (partial, noisy, mismatched or boilerplate)."""
        # items resized one by one: the block cache pays off at the clean world's two sizes, not at
        # the web world's continuous scales, where it resized a block of 256 items to use one (6x slower)
        web = web_scene(self.images, self.labels, self.world, self.split, self.seed, index, self.canvas)
        caption = truthful_caption(web.items, self.canvas) if self.split == "test" else web.caption
        scene = Scene(web.image, web.mask, web.boxes, caption, tuple(POSITIONS[it.cell] for it in web.items))
        return scene, web.items, np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, WORLD_TAG, AUGMENT_TAG])


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
    """Plain Fashion-MNIST images rendered by `render_centred`, white or in per-row `colours`;
    yields (uint8 (3,H,W), label)."""

    def __init__(
        self,
        split: str,
        canvas: int = 64,
        indices: Sequence[int] | np.ndarray | None = None,
        root: str | None = None,
        colours: Sequence[str] | None = None,
    ) -> None:
        self.images, labels = load_fashion_mnist(split, root)
        n = len(labels)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise DataError(f"Fashion-MNIST {split} indices must lie in 0..{n - 1}")
        if colours is not None and len(colours) != len(self.indices):
            raise ValueError(f"{len(colours)} colours for {len(self.indices)} rows")
        self.labels = labels[self.indices]
        self.canvas, self.colours = canvas, colours

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        colour = "white" if self.colours is None else self.colours[i]
        image = render_centred(self.images[self.indices[i]], self.canvas, colour)
        return to_chw(image), int(self.labels[i])
