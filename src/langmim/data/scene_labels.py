"""fashion-scenes' ground truth as dense training targets, for a method that learns from the labels
themselves (the supervised ceiling of the benchmark): per patch, the garment under each cell of a
finer grid inside it; per scene, which garments it holds, the colour of each, how many items it has
and which garment sits in the centre cell."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..method_specs import SUBCELLS
from .fashion_mnist import CLASS_NAMES
from .scenes import COLOURS, POSITIONS

NUM_GARMENTS = len(CLASS_NAMES)
MAX_ITEMS = 3  # fashion-scenes hold 1 to 3 items
NO_GARMENT = NUM_GARMENTS  # the centre target of a scene whose centre cell is empty
IGNORE = -1  # a target that does not apply (a garment the scene lacks, or one in two colours)
_COLOUR_INDEX = {name: i for i, name in enumerate(COLOURS)}
_CENTRE = POSITIONS.index("centre")


def subcell_labels(masks: Tensor, patch: int, subcells: int = SUBCELLS) -> Tensor:
    """(B, H, W) masks (0 background, 1 + garment) -> (B, N, subcells**2): the most frequent class
    of each cell of a patch's subcells x subcells grid, patches in row-major order (ties go to the
    lower class, background first)."""
    if patch % subcells:
        raise ValueError(f"patch size {patch} is not a multiple of {subcells} cells per side")
    one_hot = F.one_hot(masks.long(), 1 + NUM_GARMENTS).permute(0, 3, 1, 2).float()
    labels = F.avg_pool2d(one_hot, patch // subcells).argmax(dim=1)  # (B, G * s, G * s)
    b, grid = labels.shape[0], labels.shape[1] // subcells
    labels = labels.reshape(b, grid, subcells, grid, subcells).permute(0, 1, 3, 2, 4)
    return labels.reshape(b, grid * grid, subcells * subcells)


def scene_targets(labels: Sequence[int], colours: Sequence[str], positions: Sequence[str]) -> dict[str, Tensor]:
    """One scene's global targets: ``presence`` (multi-hot over garments), ``colour`` (per garment,
    its colour's index, IGNORE where absent or where two items of it differ in colour), ``count``
    (items minus one) and ``centre`` (the garment in the centre cell, or NO_GARMENT)."""
    presence = torch.zeros(NUM_GARMENTS)
    colour = torch.full((NUM_GARMENTS,), IGNORE, dtype=torch.int64)
    centre = NO_GARMENT
    for label, name, position in zip(labels, colours, positions):
        label = int(label)
        index = _COLOUR_INDEX[name]
        colour[label] = index if presence[label] == 0 or colour[label] == index else IGNORE
        presence[label] = 1.0
        if position == POSITIONS[_CENTRE]:
            centre = label
    return {"presence": presence, "colour": colour, "count": torch.tensor(len(labels) - 1), "centre": torch.tensor(centre)}


def scene_label_batch(samples: Sequence[dict], patch: int) -> dict[str, Tensor]:
    """The targets of a batch of annotated scenes (``FashionScenes(annotate=True)`` samples)."""
    per_scene = [scene_targets(s["labels"].tolist(), s["colours"], s["positions"]) for s in samples]
    batch = {key: torch.stack([t[key] for t in per_scene]) for key in per_scene[0]}
    batch["patch_labels"] = subcell_labels(torch.stack([s["mask"] for s in samples]), patch)
    return batch


def random_scene_labels(batch_size: int, num_patches: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Targets of the right shapes and ranges with no scene behind them (the dry run's)."""
    def draw(high: int, *shape: int) -> Tensor:
        return torch.randint(high, shape, generator=generator)

    return {"patch_labels": draw(1 + NUM_GARMENTS, batch_size, num_patches, SUBCELLS**2),
            "presence": draw(2, batch_size, NUM_GARMENTS).float(), "colour": draw(len(COLOURS), batch_size, NUM_GARMENTS),
            "count": draw(MAX_ITEMS, batch_size), "centre": draw(1 + NUM_GARMENTS, batch_size)}
