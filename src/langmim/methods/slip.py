"""SLIP (Mu et al. 2022): CLIP plus SimCLR on two augmented views of each image.

batch["image"] -> encoder -> patch mean @ W -> CLIP's contrastive loss with the captions;
batch["views"] (two augmented views per image, ``data/views.py``) -> the same encoder -> patch
mean -> SLIP's image MLP (hidden ``slip.ssl_mlp_dim``, output ``slip.ssl_embed_dim``, batch norm
over all ranks' samples) -> SimCLR's NT-Xent at temperature ``slip.ssl_temperature`` over all
ranks' views, gathered with gradient. L = L_clip + ``slip.ssl_scale`` * L_simclr.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist
from ..config import Config
from ..models.ssl_head import simclr_mlp
from .base import upcast
from .clip import CLIP

SELF_MASK = 1e9  # as the release: a view is not its own negative


def simclr_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of SLIP's release (``SIMCLRLoss``): for each view, the other view of the same image
    among both views of every image in the global batch (its own view left out)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    all_a, all_b = dist.gather_with_grad(a), dist.gather_with_grad(b)
    labels = torch.arange(a.shape[0], device=a.device) + dist.rank() * a.shape[0]
    self_mask = F.one_hot(labels, all_a.shape[0]) * SELF_MASK
    logits_aa = a @ all_a.T / temperature - self_mask
    logits_bb = b @ all_b.T / temperature - self_mask
    logits_ab, logits_ba = a @ all_b.T / temperature, b @ all_a.T / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return (loss_a + loss_b) / 2


class SLIP(CLIP):
    name = "slip"
    title = "SLIP"
    tags = (*CLIP.tags, "self-supervised")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.image_mlp = simclr_mlp(cfg.model.width, cfg.settings.ssl_mlp_dim, cfg.settings.ssl_embed_dim)

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        views = batch["views"]  # (B, 2, 3, H, W)
        pooled = self.visual.pool(self.visual.forward_features(views.flatten(0, 1)), "mean").unflatten(0, views.shape[:2])
        # one MLP call per view, as the release's: batch norm takes each view's batch on its own
        return {**super().features(batch), "view_a": self.image_mlp(pooled[:, 0]), "view_b": self.image_mlp(pooled[:, 1])}

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().loss(feats)
        ssl = simclr_loss(upcast(feats["view_a"]), upcast(feats["view_b"]), self.settings.ssl_temperature)
        return {**out, "loss": out["loss"] + self.settings.ssl_scale * ssl, "loss_ssl": ssl.detach()}
