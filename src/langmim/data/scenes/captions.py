"""Scene captions: the words for garments, colours, sizes and cells, and how a caption is drawn
("a small red sneaker in the top left next to a blue bag on the right.")."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from langmim.transforms import fix_articles

from .rendering import POSITIONS, PlacedItem
from .sampler import randint

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
PLURAL_NOUNS = frozenset({"trousers", "pants", "sandals"})  # take "a pair of"
CANONICAL_NOUN_PROB = 0.5
SIZE_WORD_PROB = 0.5

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
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


def pick(options: Sequence[str], rng: np.random.Generator) -> str:
    """One of ``options``, uniformly (both worlds' captions draw every word choice this way)."""
    return options[randint(rng, len(options))]


def pick_noun(label: int, rng: np.random.Generator) -> str:
    """A garment's canonical name half the time, else one of its synonyms."""
    canonical, *synonyms = NOUNS[label]
    return canonical if rng.random() < CANONICAL_NOUN_PROB else pick(synonyms, rng)


def item_phrase(noun: str, colour: str, position_phrase: str, size: str | None = None) -> str:
    """E.g. "a small red sneaker in the top left"; articles are fixed later."""
    article = "a pair of" if noun in PLURAL_NOUNS else "a"
    return f"{article} {size + ' ' if size else ''}{colour} {noun} {position_phrase}"


def _item_phrase(item: PlacedItem, rng: np.random.Generator) -> str:
    """One item in words, with the size word, noun and position phrase drawn at random."""
    size = item.size if rng.random() < SIZE_WORD_PROB else None
    noun = pick_noun(item.label, rng)
    return item_phrase(noun, item.colour, pick(POSITION_PHRASES[POSITIONS[item.cell]], rng), size)


def relations(cell_a: int, cell_b: int) -> list[str]:
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


def join_phrases(phrases: list[str], relation: str) -> str:
    """"A rel B" / "A rel B, and C" / "A and B" / "A, B and C"."""
    if relation == "and" or len(phrases) == 1:
        units = phrases
    else:
        units = [f"{phrases[0]} {relation} {phrases[1]}", *phrases[2:]]
    if len(units) == 1:
        return units[0]
    last = ", and " if relation != "and" else " and "
    return ", ".join(units[:-1]) + last + units[-1]


def caption_of(items: Sequence[PlacedItem], rng: np.random.Generator) -> str:
    template = pick(CAPTION_TEMPLATES, rng)
    phrases = [_item_phrase(item, rng) for item in items]
    relation = pick(relations(items[0].cell, items[1].cell), rng) if len(items) > 1 else "and"
    return fix_articles(template.format(items=join_phrases(phrases, relation)))
