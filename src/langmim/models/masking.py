"""Per-sample random masking from given noise (MAE's argsort of noise)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Masking:
    ids_keep: torch.Tensor  # (B, K) patch indices the encoder sees, in shuffled order
    ids_restore: torch.Tensor  # (B, N) where each patch sits in [kept, masked] order
    mask: torch.Tensor  # (B, N) 1 on masked patches, 0 on visible ones


def num_visible(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1.0 - mask_ratio))


def mask_from_noise(noise: torch.Tensor, num_keep: int) -> Masking:
    """Keep the ``num_keep`` patches with the smallest noise. Noise comes from the batch, so
    masks are a pure function of (seed, sample index): resumed and distributed runs match."""
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return Masking(ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore, mask=mask)
