"""The supervised ceiling: the same encoder trained for the same budget on fashion-scenes' own
ground truth instead of captions, pixels or a teacher. It shows what the evaluation's probes can
read from an encoder that certainly knows which garment is where, so a task whose ceiling stays
near the random-init floor is a blind probe, not a weak method.

batch["image"] (full, unmasked) -> encoder -> patch tokens -> per token, the garment of each cell
of a 4 x 4 grid inside its patch (cross-entropy over background + 10 garments, garment and
background cells weighted equally); patch-token mean ->
which garments the scene holds (binary cross-entropy), the colour of each one present, the number
of items and the garment in the centre cell (cross-entropy each). The loss is the sum of the five.
The heads read the patch tokens and their mean, what the probes read too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data.scene_labels import IGNORE, MAX_ITEMS, NUM_GARMENTS
from ..data.scenes import COLOURS
from ..method_specs import SUBCELLS
from .base import PretrainMethod

TERMS = ("loss_patch", "loss_presence", "loss_colour", "loss_count", "loss_centre")


def balanced_patch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the cells' garments, the mean over garment cells and the mean over
    background cells weighted equally: background fills about 90% of the cells, and an unweighted
    loss is met by naming background nearly everywhere."""
    per_cell = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none")
    garment = labels.flatten() > 0
    means = [per_cell[part].mean() for part in (garment, ~garment) if part.any()]
    return sum(means) / len(means)


class Supervised(PretrainMethod):
    name = "supervised"
    title = "Supervised on scene labels"
    tags = ("image-segmentation", "image-classification")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        width = cfg.model.width
        self.patch_head = nn.Linear(width, SUBCELLS**2 * (1 + NUM_GARMENTS))
        self.presence_head = nn.Linear(width, NUM_GARMENTS)
        self.colour_head = nn.Linear(width, NUM_GARMENTS * len(COLOURS))
        self.count_head = nn.Linear(width, MAX_ITEMS)
        self.centre_head = nn.Linear(width, 1 + NUM_GARMENTS)

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens = self.visual.forward_features(batch["image"])
        patches = tokens[:, 1:]
        pooled = self.image_embedding(tokens)
        b, n = patches.shape[:2]
        return {
            "patch_logits": self.patch_head(patches).reshape(b, n, SUBCELLS**2, 1 + NUM_GARMENTS),
            "presence_logits": self.presence_head(pooled),
            "colour_logits": self.colour_head(pooled).reshape(b, NUM_GARMENTS, len(COLOURS)),
            "count_logits": self.count_head(pooled),
            "centre_logits": self.centre_head(pooled),
            **{key: batch[key] for key in ("patch_labels", "presence", "colour", "count", "centre")},
        }

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), ignore_index=IGNORE)

        colour = feats["colour"]
        terms = {
            "loss_patch": balanced_patch_loss(feats["patch_logits"], feats["patch_labels"]),
            "loss_presence": F.binary_cross_entropy_with_logits(feats["presence_logits"].float(), feats["presence"].float()),
            # a batch where no garment has one colour would give NaN: a zero that keeps the head in the graph (DDP)
            "loss_colour": cross_entropy(feats["colour_logits"], colour) if (colour != IGNORE).any() else feats["colour_logits"].sum() * 0.0,
            "loss_count": cross_entropy(feats["count_logits"], feats["count"]),
            "loss_centre": cross_entropy(feats["centre_logits"], feats["centre"]),
        }
        return {"loss": sum(terms[t] for t in TERMS), **terms}
