"""CLIP baseline (Radford et al. 2021) with RILS's image pooling (mean of patch tokens), so
CLIP and RILS differ only in the objective."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ImageTextMethod, upcast


class CLIP(ImageTextMethod):
    name = "clip"
    title = "CLIP"
    tags = ("contrastive",)

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens = self.visual.forward_features(batch["image"])
        return {
            "image_embed": F.normalize(self.image_embedding(tokens), dim=-1),
            "text_embed": self.encode_text(batch["text"]),
            **self.logits_per_sample(tokens.shape[0]),
        }

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = self.contrastive_loss(upcast(feats["image_embed"]), upcast(feats["text_embed"]), feats)
        return {"loss": loss, "loss_clip": loss.detach(), "logit_scale": feats["logit_scale"].mean().detach()}
