"""The built-in worlds' settings, read without torch (the config holds them): ``clean`` (every
caption exhaustive and true, the original fashion-scenes) and ``web`` (``WebWorld``: cluttered,
long-tailed scenes with partial and noisy captions, drawn by ``data/scenes/web.py``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError, shown

WORLDS = ("clean", "web")
MAX_ITEMS = 12
MAX_DISTRACTORS = 12
NUM_CONCEPTS = 100  # garment x colour concepts: 10 Fashion-MNIST classes x 10 palette colours


def _check(ok: bool, name: str, value: object, what: str) -> None:
    if not ok:
        raise ConfigError(f"config key 'data.web.{name}' must be {what}, got {shown(value)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class WebWorld:
    """Every property of the web world. The defaults are the `web` preset, fixed before any method
    was compared on it; change a value only to study that property."""

    # clutter
    min_items: int = 2
    max_items: int = 6
    min_scale: float = 0.25  # item side as a fraction of the canvas, uniform in [min_scale, max_scale]
    max_scale: float = 0.55
    textured_background: float = 0.5  # share of textured backgrounds; the rest are linear gradients
    max_distractors: int = 3  # 0 to this many shapes drawn behind the items
    # long tail
    zipf_exponent: float = 1.0
    eval_uniform_concepts: bool = True  # test-split scenes draw concepts uniformly
    head_concepts: int = 20  # the most frequent concepts in pre-training...
    tail_concepts: int = 50  # ...and the least frequent, as `head_tail_concepts` splits them
    # coverage: probabilities per item of the scene's own caption
    extra_item_prob: float = 0.4
    colour_drop: float = 0.4
    size_drop: float = 0.8
    position_drop: float = 0.7
    # language
    hypernym_prob: float = 0.2
    reorder_prob: float = 0.3
    misspell_prob: float = 0.02  # per word of 4+ letters
    # Pairs whose caption shares no concept with the image: 16.8% of CC3M's (arXiv 2404.04125,
    # Table 3). How that share splits between another image's caption and text with no visual
    # content is not published; this split is our choice.
    mismatch_share: float = 0.118
    boilerplate_share: float = 0.05

    def validate(self) -> WebWorld:
        """Raise ConfigError naming the first field out of its range; return the world."""
        _check(_is_int(self.min_items) and 1 <= self.min_items <= MAX_ITEMS, "min_items", self.min_items, f"an integer in [1, {MAX_ITEMS}]")
        _check(_is_int(self.max_items) and self.min_items <= self.max_items <= MAX_ITEMS, "max_items", self.max_items,
               f"an integer in [min_items={self.min_items}, {MAX_ITEMS}]")
        _check(_is_real(self.min_scale) and 0 < self.min_scale <= 1, "min_scale", self.min_scale, "in (0, 1]")
        _check(_is_real(self.max_scale) and self.min_scale <= self.max_scale <= 1, "max_scale", self.max_scale,
               f"in [min_scale={self.min_scale}, 1]")
        _check(_is_int(self.max_distractors) and 0 <= self.max_distractors <= MAX_DISTRACTORS, "max_distractors",
               self.max_distractors, f"an integer in [0, {MAX_DISTRACTORS}]")
        _check(_is_real(self.zipf_exponent) and 0 <= self.zipf_exponent <= 10, "zipf_exponent", self.zipf_exponent, "in [0, 10]")
        _check(isinstance(self.eval_uniform_concepts, bool), "eval_uniform_concepts", self.eval_uniform_concepts, "true or false")
        _check(_is_int(self.head_concepts) and 1 <= self.head_concepts < NUM_CONCEPTS, "head_concepts", self.head_concepts,
               f"an integer in [1, {NUM_CONCEPTS - 1}]")
        _check(_is_int(self.tail_concepts) and 1 <= self.tail_concepts <= NUM_CONCEPTS - self.head_concepts, "tail_concepts",
               self.tail_concepts, f"an integer in [1, {NUM_CONCEPTS} - head_concepts]")
        for name in ("textured_background", "extra_item_prob", "colour_drop", "size_drop", "position_drop", "hypernym_prob",
                     "reorder_prob", "misspell_prob", "mismatch_share", "boilerplate_share"):
            value = getattr(self, name)
            _check(_is_real(value) and 0 <= value <= 1, name, value, "in [0, 1]")
        _check(self.mismatch_share + self.boilerplate_share <= 1, "mismatch_share + boilerplate_share",
               self.mismatch_share + self.boilerplate_share, "at most 1")
        return self

    @property
    def size_threshold(self) -> float:
        """Items at least this large (a fraction of the canvas) are "large", the others "small"."""
        return (self.min_scale + self.max_scale) / 2
