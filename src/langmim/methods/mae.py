"""MAE (He et al. 2022): reconstruct the pixels of masked patches from the visible 25%.

batch["image"] -> random mask from batch["noise"] -> encoder on visible patches + CLS ->
decoder with mask tokens -> per-patch pixels -> MSE on masked patches, targets normalised
per patch (norm_pix_loss).
"""
from __future__ import annotations

import torch

from ..config import Config, ModelConfig
from ..method_specs import MAESettings
from ..models.decoder import MaskTokenDecoder
from .base import MaskedImageModelling, PretrainMethod


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch_size**2 * C), patches in row-major order, pixels (p, q, c)."""
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, gh * gw, patch_size * patch_size * c)


def masked_pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error per patch, averaged over masked patches only."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def pixel_decoder(m: ModelConfig, own: MAESettings, grid_size: int) -> MaskTokenDecoder:
    """MAE's decoder: narrower and shallower than the encoder (``mae.decoder_*``), predicting
    each patch's pixels."""
    return MaskTokenDecoder(m.width, own.decoder_width, own.decoder_depth, own.decoder_heads, out_dim=m.patch_size**2 * 3, grid_size=grid_size)


class MAE(MaskedImageModelling, PretrainMethod):
    name = "mae"
    title = "MAE"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.decoder = pixel_decoder(cfg.model, cfg.settings, self.visual.grid_size)

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]
        masking = self.masking(batch)
        pred = self.predict_masked(images, masking)
        return {"pred": pred, "target": patchify(images, self.visual.patch_size), "mask": masking.mask}

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = masked_pixel_loss(feats["pred"].float(), feats["target"].float(), feats["mask"], self.settings.norm_pix_loss)
        return {"loss": loss}
