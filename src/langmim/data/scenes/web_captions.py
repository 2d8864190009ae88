"""The web world's captions: partial, varied and sometimes wrong, as alt-texts of a web crawl are.

A scene's own caption names its most salient item and, with probability `extra_item_prob` each,
the next ones (stopping at the first miss); per named item it drops the colour, size or position
words at the world's rates, says a hypernym instead of the noun now and then, varies the word order
and the joins, wraps it all in a shop-like template and misspells a few words. Whatever it keeps
is true. `boilerplate` is text with no visual content; `truthful_caption` is the exhaustive, always
true description that evaluation scenes are scored on.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from langmim.transforms import fix_articles
from langmim.worlds import WebWorld

from .captions import CAPTION_TEMPLATES, NOUNS, PLURAL_NOUNS, POSITION_PHRASES, item_phrase, join_phrases, pick, pick_noun
from .rendering import POSITIONS
from .sampler import randint
from .web_items import WebItem

HYPERNYMS: tuple[tuple[str, ...], ...] = (
    ("top", "clothing"),  # t-shirt
    ("clothing",),  # trouser ("pants" is already a synonym)
    ("top", "clothing"),  # pullover
    ("outfit", "clothing"),  # dress
    ("top", "clothing"),  # coat
    ("shoes", "footwear"),  # sandal
    ("top", "clothing"),  # shirt
    ("shoes", "footwear"),  # sneaker
    ("accessory",),  # bag
    ("shoes", "footwear"),  # ankle boot
)  # per class, as NOUNS
_ARTICLES = {"clothing": "a piece of", "footwear": "some", "shoes": "a pair of"}  # mass and plural hypernyms
WEB_TEMPLATES: tuple[str, ...] = (
    "{items}", "{items}.", "a photo of {items}.", "{items} for sale", "for sale: {items}", "brand new: {items}",
    "{items} on a rug", "check out {items}!", "my new favourite: {items}", "{items} - great condition", "just got {items}",
    "{items} in stock now", "selling {items}, message me", "close-up of {items}", "look at {items}", "{items} | online shop",
)  # every one takes items that start with an article
_JOINS: tuple[tuple[str, str], ...] = (
    (", ", " and "), (", ", ", "), (" & ", " & "), (" + ", " + "), (", ", " with "), (" / ", " / "),
)  # (between items, before the last)
_SHOP_PHRASES: tuple[str, ...] = (
    "free shipping on all orders", "click here to see more", "limited time offer", "shop now", "sale ends sunday",
    "add to cart", "best price guaranteed", "subscribe for updates", "all rights reserved", "no description available",
    "untitled", "image not found", "see more at our store", "50% off this week only",
)
_FILE_NAMES: tuple[str, ...] = ("IMG_{:04d}.jpg", "DSC{:05d}", "photo_{:05d}.png", "image{:03d}.jpeg", "P{:07d}.JPG", "scan-{:04d}.tif")
_HASHTAGS: tuple[str, ...] = (
    "#ootd", "#fashion", "#style", "#instafashion", "#lookbook", "#shopping", "#sale", "#instagood",
    "#photooftheday", "#love", "#musthave", "#trending",
)
_LONG_WORD = re.compile(r"[a-z]{4,}")


@dataclass(frozen=True)
class Mention:
    """One item as a caption names it; None marks a dropped attribute (each is true when kept)."""

    order: int  # the item's drawing order
    noun: str
    colour: str | None
    size: str | None
    position: str | None  # a POSITIONS name: the cell of the item's centre


def salience_order(items: Sequence[WebItem], canvas: int) -> list[int]:
    """Indices of `items` from most to least salient: most visible pixels, then nearest the
    canvas centre, then front-most."""
    def key(i: int) -> tuple[int, float, int]:
        x, y = items[i].centre
        return -items[i].area, (x - canvas / 2) ** 2 + (y - canvas / 2) ** 2, -items[i].order
    return sorted(range(len(items)), key=key)


def _mention(item: WebItem, world: WebWorld, rng: np.random.Generator) -> Mention:
    colour = None if rng.random() < world.colour_drop else item.colour
    size = None if rng.random() < world.size_drop else item.size
    position = None if rng.random() < world.position_drop else POSITIONS[item.cell]
    noun = pick(HYPERNYMS[item.label], rng) if rng.random() < world.hypernym_prob else pick_noun(item.label, rng)
    return Mention(order=item.order, noun=noun, colour=colour, size=size, position=position)


def _phrase(mention: Mention, world: WebWorld, rng: np.random.Generator) -> str:
    """E.g. "a small red sneaker in the top left", or reordered "a small sneaker in red"."""
    article = _ARTICLES.get(mention.noun, "a pair of" if mention.noun in PLURAL_NOUNS else "a")
    where = pick(POSITION_PHRASES[mention.position], rng) if mention.position else None
    if mention.colour and rng.random() < world.reorder_prob:
        words = (article, mention.size, mention.noun, f"in {mention.colour}", where)
    else:
        words = (article, mention.size, mention.colour, mention.noun, where)
    return " ".join(w for w in words if w)


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    between, last = pick(_JOINS, rng)
    return phrases[0] if len(phrases) == 1 else between.join(phrases[:-1]) + last + phrases[-1]


def misspell(text: str, prob: float, rng: np.random.Generator) -> str:
    """Misspell each word of 4+ letters with probability `prob`: two adjacent letters swapped or one dropped."""
    def change(match: re.Match[str]) -> str:
        word = match.group(0)
        if rng.random() >= prob:
            return word
        if rng.random() < 0.5:
            i = randint(rng, len(word) - 1)
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        i = randint(rng, len(word))
        return word[:i] + word[i + 1:]
    return _LONG_WORD.sub(change, text)


def own_caption(items: Sequence[WebItem], world: WebWorld, canvas: int, rng: np.random.Generator) -> tuple[str, tuple[Mention, ...]]:
    """A scene's own pre-training caption and the items it names, most salient first."""
    ranked = salience_order(items, canvas)
    named = 1
    while named < len(ranked) and rng.random() < world.extra_item_prob:
        named += 1
    mentions = tuple(_mention(items[i], world, rng) for i in ranked[:named])
    phrases = [_phrase(m, world, rng) for m in mentions]
    text = fix_articles(pick(WEB_TEMPLATES, rng).format(items=_join(phrases, rng)))
    return misspell(text, world.misspell_prob, rng), mentions


def boilerplate(rng: np.random.Generator) -> str:
    """Text with no visual content: a shop phrase, a camera file name or a few hashtags."""
    kind = randint(rng, 3)
    if kind == 0:
        return pick(_SHOP_PHRASES, rng)
    if kind == 1:
        return pick(_FILE_NAMES, rng).format(randint(rng, 100000))
    return " ".join(_HASHTAGS[i] for i in rng.permutation(len(_HASHTAGS))[:2 + randint(rng, 3)])


def truthful_caption(items: Sequence[WebItem], canvas: int) -> str:
    """Every item, most salient first, with its size word, colour, canonical noun and the first
    phrase of its centre's cell: "a photo of a large red sneaker in the top left and a small ...".
    """
    phrases = [item_phrase(NOUNS[items[i].label][0], items[i].colour, POSITION_PHRASES[POSITIONS[items[i].cell]][0], items[i].size)
               for i in salience_order(items, canvas)]
    return fix_articles(CAPTION_TEMPLATES[0].format(items=join_phrases(phrases, "and")))
