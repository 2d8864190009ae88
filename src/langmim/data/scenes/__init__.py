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

The package, by what it does: `rendering` (palette, grid, Pillow-exact resizing, pasting),
`captions` (the words and how a caption is drawn), `sampler` (which items a scene holds, and the
augmentations that keep its caption true) and `datasets` (FashionScenes, FashionMNISTCentred).
"""
from langmim.data.fashion_mnist import CLASS_NAMES

from .captions import (
    CANONICAL_NOUN_PROB,
    CAPTION_TEMPLATES,
    NOUNS,
    POSITION_PHRASES,
    SIZE_WORD_PROB,
    caption_of,
    item_phrase,
    join_phrases,
    relations,
)
from .datasets import EVAL_SCENE_SEED, PATCH_CACHE_BYTES, FashionMNISTCentred, FashionScenes, collate_scenes
from .rendering import (
    CENTRE,
    COLOURS,
    ITEM_THRESHOLD,
    MAX_JITTER,
    POSITIONS,
    SIZES,
    PlacedItem,
    block_items,
    item_side,
    render_centred,
    render_scene,
    resize_item,
    resize_items,
    to_chw,
)
from .sampler import CENTRED_PROB, MAX_SHIFT, PLAIN_COLOURS, Scene, cumulative_item_probs, hflip, randint, sample_items, translate

__all__ = [
    "CLASS_NAMES", "COLOURS", "SIZES", "POSITIONS", "NOUNS", "CAPTION_TEMPLATES",
    "ITEM_THRESHOLD", "EVAL_SCENE_SEED", "FashionScenes", "FashionMNISTCentred", "collate_scenes", "render_centred",
    "CANONICAL_NOUN_PROB", "CENTRE", "CENTRED_PROB", "MAX_JITTER", "MAX_SHIFT", "PATCH_CACHE_BYTES", "PLAIN_COLOURS",
    "POSITION_PHRASES", "SIZE_WORD_PROB", "PlacedItem", "Scene", "block_items", "caption_of", "cumulative_item_probs",
    "hflip", "item_phrase", "item_side", "join_phrases", "randint", "relations", "render_scene", "resize_item",
    "resize_items", "sample_items", "to_chw", "translate",
]
