"""FLIP (Li et al. 2023): CLIP whose image encoder sees only a random share of the patches.

Each training image keeps ``max(1, int(N * (1 - flip.patch_dropout)))`` of its N patches, drawn
uniformly per sample (the K with the smallest masking noise: open_clip's ``PatchDropout``
semantics, CLS always kept, positions added before the drop), and the encoder computes only
those, so a step costs about the kept share of CLIP's image side. No patch is reconstructed. The
last ``flip.unmasked_steps`` steps of ``train.steps`` see every patch (the paper's unmasked
tuning), decided by the trainer's step, which a resume restores; evaluation always does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..models.masking import mask_from_noise
from .clip import CLIP


def patches_kept(num_patches: int, dropout: float) -> int:
    """How many patches survive: at least one, as in open_clip."""
    return max(1, int(num_patches * (1.0 - dropout)))


class FLIP(CLIP):
    name = "flip"
    title = "FLIP"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.num_keep = patches_kept(self.visual.num_patches, cfg.settings.patch_dropout)
        self.first_unmasked = cfg.train.steps - cfg.settings.unmasked_steps  # counted back from the schedule's end

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]
        tuning = bool((batch["step"] >= self.first_unmasked).any())  # the trainer's step, the same for every sample
        ids_keep = None if tuning else mask_from_noise(batch["noise"], self.num_keep).ids_keep
        tokens = self.visual.forward_features(images, ids_keep)
        return {
            "image_embed": F.normalize(self.image_embedding(tokens), dim=-1),
            "text_embed": self.encode_text(batch["text"]),
            **self.logits_per_sample(images.shape[0]),
        }
