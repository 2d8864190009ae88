"""RILS (Yang et al. 2023): masked image modelling in the language semantic space.

Per step the same image goes through the same encoder twice:
1. masked pass: 75% of patches masked, encoder on the visible ones, a one-block decoder of
   the encoder's width predicts a feature for every patch (``masked_pred``);
2. full pass: encoder on all patches (``unmasked_feat``).
With one projection W into the joint space and the batch's caption embeddings T as prototypes:
- ``L_clip``: symmetric InfoNCE between v = norm(mean_k unmasked_feat @ W) and the captions;
- ``L_rec``: per masked patch, KL(p || q) with the prediction q = softmax(norm(masked_pred W) T^T / 0.1)
  and the stop-gradient target p = softmax(norm(unmasked_feat W) T^T / 0.04) of the same encoder,
  averaged over masked patches of the samples whose image->text argmax is their own caption (c_i = 1).
L = L_clip + 0.5 L_rec (``rils.rec_weight``, ``rils.prediction_temperature``, ``rils.target_temperature``).
Prototypes are all ranks' captions, detached; the count that normalises L_rec is global, so N ranks
compute exactly what one process would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist
from ..config import Config
from ..models.decoder import MaskTokenDecoder
from .base import ImageTextMethod, MaskedImageModelling, upcast


def reconstruction_kl(
    prediction: torch.Tensor,
    target: torch.Tensor,
    prototypes: torch.Tensor,
    prediction_temperature: float,
    target_temperature: float,
) -> torch.Tensor:
    """KL(p || q) per patch, (B, N): p from the target features (no gradient), q from the prediction."""
    log_q = F.log_softmax(prediction @ prototypes.T / prediction_temperature, dim=-1)
    with torch.no_grad():
        log_p = F.log_softmax(target @ prototypes.T / target_temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def retrieval_hits(image_embed: torch.Tensor, all_text_embed: torch.Tensor) -> torch.Tensor:
    """c_i: 1 where image i's most similar caption (over the global batch) is its own."""
    offset = dist.rank() * image_embed.shape[0]
    own = torch.arange(image_embed.shape[0], device=image_embed.device) + offset
    return ((image_embed @ all_text_embed.T).argmax(dim=-1) == own).float()


class RILS(MaskedImageModelling, ImageTextMethod):
    name = "rils"
    title = "RILS"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        m = cfg.model
        self.decoder = MaskTokenDecoder(
            m.width, m.width, depth=1, heads=m.heads, out_dim=m.width, grid_size=self.visual.grid_size
        )

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]
        masking = self.masking(batch)
        masked_pred = self.predict_masked(images, masking)
        unmasked_feat = self.visual.forward_features(images)
        return {
            "image_embed": F.normalize(self.image_embedding(unmasked_feat), dim=-1),
            "text_embed": self.encode_text(batch["text"]),
            "prediction": F.normalize(masked_pred @ self.image_projection, dim=-1),
            "target": self.patch_embeddings(unmasked_feat),
            "mask": masking.mask,
            **self.logits_per_sample(images.shape[0]),
        }

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_embed, text_embed = upcast(feats["image_embed"]), upcast(feats["text_embed"])
        loss_clip = self.contrastive_loss(image_embed, text_embed, feats)

        prototypes = dist.gather_with_grad(text_embed).detach()
        own = self.settings
        kl = reconstruction_kl(
            upcast(feats["prediction"]), upcast(feats["target"]), prototypes, own.prediction_temperature, own.target_temperature)
        hits = retrieval_hits(image_embed.detach(), prototypes)
        weights = feats["mask"] * hits[:, None]
        global_count = dist.all_reduce_sum(weights.sum())
        # DDP averages gradients over ranks, so each rank's share is scaled back by world size.
        loss_rec = (weights * kl).sum() * dist.world_size() / (global_count + 1e-6)

        loss = loss_clip + own.rec_weight * loss_rec
        return {
            "loss": loss,
            "loss_clip": loss_clip.detach(),
            "loss_rec": loss_rec.detach(),
            "match_rate": dist.all_reduce_sum(hits.sum()) / (hits.numel() * dist.world_size()),
            "logit_scale": feats["logit_scale"].mean().detach(),
        }
