"""A world at a glance: a PNG grid of pre-training scenes with the captions they are trained on,
so that a user sees the data before training on it (``langmim data preview``)."""
from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw

from langmim.worlds import WebWorld

from .datasets import FashionScenes
from .web import web_pair

SCALE = 3  # each scene enlarged 3x, nearest-neighbour
TEXT_LINES, LINE_HEIGHT = 5, 11


def preview_grid(world: WebWorld | None, n: int = 16, canvas: int = 64, seed: int = 0, root: str | None = None,
                 plain_share: float = 0.3) -> Image.Image:
    """The first ``n`` training scenes of the clean world (``world=None``) or ``world``, as
    pre-training draws them (no augmentation), each with its caption; a web caption is prefixed
    with its kind: [own], [mismatch] (another scene's) or [boilerplate]."""
    scenes = FashionScenes("train", canvas, seed=seed, root=root, plain_prob=plain_share, annotate=False, world=world)
    columns, cell = math.ceil(math.sqrt(n)), canvas * SCALE
    height = cell + TEXT_LINES * LINE_HEIGHT + 12
    sheet = Image.new("RGB", (columns * (cell + 8), math.ceil(n / columns) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        sample = scenes[i]
        caption = sample["caption"]
        if world is not None:
            caption = f"[{web_pair(scenes.images, scenes.labels, world, 'train', seed, i, canvas).kind}] {caption}"
        x, y = (i % columns) * (cell + 8) + 4, (i // columns) * height + 4
        sheet.paste(Image.fromarray(sample["image"].permute(1, 2, 0).numpy()).resize((cell, cell), Image.NEAREST), (x, y))
        for j, line in enumerate(textwrap.wrap(caption, width=max(8, cell // 5))[:TEXT_LINES]):
            draw.text((x, y + cell + 2 + j * LINE_HEIGHT), line, fill="black")
    return sheet
