"""One item of a web-world scene and its garment x colour concept: what the scene drawer
(``web``) places and the caption writer (``web_captions``) names."""
from __future__ import annotations

from dataclasses import dataclass

from .rendering import COLOURS

_COLOUR_INDEX = {name: i for i, name in enumerate(COLOURS)}


def concept_of(label: int, colour: str) -> int:
    return label * len(COLOURS) + _COLOUR_INDEX[colour]


@dataclass(frozen=True)
class WebItem:
    """One item of a web scene; items are listed in drawing order (0 at the back)."""

    source: int  # index into the split's Fashion-MNIST arrays
    label: int
    colour: str
    scale: float  # side as a fraction of the canvas
    size: str  # "small" or "large", by the world's size_threshold
    x0: int  # its square on the canvas: x0 <= x < x0 + side, y0 <= y < y0 + side
    y0: int
    side: int
    order: int
    area: int  # its pixels in the mask: above ITEM_THRESHOLD and not hidden by items in front
    cell: int  # index into POSITIONS of the 3x3 cell holding its centre
    named: bool = False  # named by the scene's pre-training caption

    @property
    def centre(self) -> tuple[float, float]:
        return self.x0 + self.side / 2, self.y0 + self.side / 2

    @property
    def concept(self) -> int:
        return concept_of(self.label, self.colour)
