"""A compositional zero-shot benchmark on fashion scenes (in the spirit of ARO, Winoground, SugarCrepe).

Each evaluation scene gets a canonical true caption ("a photo of a small red sneaker in the top left
above a large blue bag at the bottom.") and, per kind of change, hard negative captions that alter
exactly one thing and are false for the scene:

- garment: one item's class replaced by a class absent from the scene;
- colour: one item's colour replaced by a colour absent from the scene;
- size: one item's size flipped;
- position: one item moved to a free cell of the grid;
- relation: the relation between the first two items replaced by its opposite (positions kept);
- swap: two items' colours exchanged (or their garments, where the colours are equal), so that the
  words stay the same and only their binding to the items changes.

A model passes a (scene, kind) pair when the image is closer to the true caption than to every
negative of that kind. Captions are canonical (size word, first noun, first position phrase,
template "a photo of {items}.") so that a negative differs from the truth in the changed attribute only.
Replacement garments and colours are drawn from those absent from the scene, so that such a
negative is false whatever the model makes of positions; binding is what swap tests.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from langmim.data.fashion_mnist import CLASS_NAMES
from langmim.data.scenes import (
    CAPTION_TEMPLATES,
    COLOURS,
    NOUNS,
    POSITION_PHRASES,
    POSITIONS,
    SIZES,
    FashionScenes,
    item_phrase,
    join_phrases,
    relations,
)
from langmim.transforms import fix_articles

__all__ = ["KINDS", "OPPOSITE_RELATIONS", "CompositionalScenes", "describe", "hard_negatives"]

KINDS: tuple[str, ...] = ("garment", "colour", "size", "position", "relation", "swap")
OPPOSITE_RELATIONS: dict[str, str] = {
    "above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of",
}  # "next to" has no opposite
TEMPLATE = CAPTION_TEMPLATES[0]  # "a photo of {items}."


def _phrase(label: int, colour: str, size: str, position: str) -> str:
    """One item with the size word, the canonical noun and the first position phrase."""
    return item_phrase(NOUNS[label][0], colour, POSITION_PHRASES[position][0], size)


def describe(
    labels: Sequence[int], colours: Sequence[str], sizes: Sequence[str], positions: Sequence[str], relation: str | None = None
) -> str:
    """The canonical caption of items given per attribute in drawing order; `relation` (a word of
    `_relations` other than "and"; None for "and") joins the first two items as `_join` does."""
    phrases = [_phrase(int(label), c, s, p) for label, c, s, p in zip(labels, colours, sizes, positions)]
    return fix_articles(TEMPLATE.format(items=join_phrases(phrases, relation or "and")))


def _draw(candidates: list[Any], make: Callable[[Any], str], rng: np.random.Generator, limit: int) -> list[str]:
    """Captions `make(c)` of up to `limit` candidates drawn without replacement. Every candidate
    changes the truth, and no two change it alike, so the captions differ from it and from each other."""
    return [make(candidates[i]) for i in rng.permutation(len(candidates))[:limit]]


def _replaced(values: Sequence[Any], i: int, value: Any) -> list[Any]:
    return [value if j == i else v for j, v in enumerate(values)]


def _swapped(values: Sequence[Any], i: int, j: int) -> list[Any]:
    out = list(values)
    out[i], out[j] = out[j], out[i]
    return out


def hard_negatives(sample: dict[str, Any], rng: np.random.Generator, per_kind: int = 3) -> tuple[str, dict[str, list[str]]]:
    """The true canonical caption of an annotated scene and, per kind of KINDS, up to `per_kind`
    distinct false captions that each change one thing (an empty list where a kind does not apply).

    With 2+ items the truth states a relation between items 0 and 1 drawn from the true ones
    other than "and" (`_relations`); every negative keeps it, except relation negatives, which
    state its opposite.
    """
    items = {"labels": [int(label) for label in sample["labels"]], "colours": list(sample["colours"]),
             "sizes": list(sample["sizes"]), "positions": list(sample["positions"])}
    labels, colours, sizes, positions = items.values()
    n = len(labels)
    relation = "and"
    if n > 1:
        words = [w for w in relations(POSITIONS.index(positions[0]), POSITIONS.index(positions[1])) if w != "and"]
        relation = words[int(rng.integers(len(words)))] if words else "and"

    def caption(rel: str = relation, **changed: list[Any]) -> str:
        return describe(**{**items, **changed}, relation=rel)

    def swap(ij: tuple[int, int]) -> str:
        """Exchange the colours of items i and j, or their garments where the colours are equal."""
        key = "colours" if colours[ij[0]] != colours[ij[1]] else "labels"
        return caption(**{key: _swapped(items[key], *ij)})

    truth = caption()
    free = [p for p in POSITIONS if p not in positions]
    candidates: dict[str, tuple[list[Any], Callable[[Any], str]]] = {
        "garment": ([(i, c) for i in range(n) for c in range(len(CLASS_NAMES)) if c not in labels],
                    lambda ic: caption(labels=_replaced(labels, *ic))),
        "colour": ([(i, c) for i in range(n) for c in COLOURS if c not in colours], lambda ic: caption(colours=_replaced(colours, *ic))),
        "size": ([(i, s) for i in range(n) for s in SIZES if s != sizes[i]], lambda is_: caption(sizes=_replaced(sizes, *is_))),
        "position": ([(i, p) for i in range(n) for p in free], lambda ip: caption(positions=_replaced(positions, *ip))),
        "relation": ([OPPOSITE_RELATIONS[relation]] if relation in OPPOSITE_RELATIONS else [], caption),
        "swap": ([(i, j) for i in range(n) for j in range(i + 1, n) if colours[i] != colours[j] or labels[i] != labels[j]], swap),
    }
    return truth, {kind: _draw(*candidates[kind], rng, per_kind) for kind in KINDS}


class CompositionalScenes(Dataset):
    """Evaluation scenes with their true caption and hard negatives per kind.

    Sample i is {"image" uint8 (3,H,W), "caption", "negatives": kind -> list of captions}, a pure
    function of (the wrapped scenes, seed, i).
    """

    def __init__(self, scenes: FashionScenes, seed: int = 0, per_kind: int = 3) -> None:
        if not scenes.annotate:
            raise ValueError("CompositionalScenes needs annotated scenes (FashionScenes(..., annotate=True))")
        if per_kind < 1:
            raise ValueError(f"per_kind must be at least 1, got {per_kind}")
        self.scenes, self.seed, self.per_kind = scenes, seed, per_kind

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.scenes[index]
        caption, negatives = hard_negatives(sample, np.random.default_rng([self.seed, index]), self.per_kind)
        return {"image": sample["image"], "caption": caption, "negatives": negatives}
