"""MAE-style decoder: visible tokens + mask tokens put back in place, own sin-cos positions."""
from __future__ import annotations

import torch
from torch import nn

from .pos_embed import sincos_2d
from .vit import init_transformer_weights, vit_blocks


class MaskTokenDecoder(nn.Module):
    """Maps encoder tokens of the visible patches (CLS first) to one prediction per patch.

    MAE uses it with width 512, 8 blocks and pixel outputs; RILS with the encoder's width,
    one block and outputs in the encoder's width; MILAN's ablation with ``predict_cls`` (its
    targets include the CLS token).
    """

    def __init__(
        self, in_width: int, width: int, depth: int, heads: int, out_dim: int, grid_size: int, predict_cls: bool = False
    ) -> None:
        super().__init__()
        self.predict_cls = predict_cls
        self.decoder_embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("decoder_pos_embed", sincos_2d(width, grid_size, cls_token=True))
        self.decoder_blocks = vit_blocks(width, depth, heads)
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.decoder_pred = nn.Linear(width, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1 + K, D_enc) -> predictions (B, N, out_dim) in patch order, CLS dropped
        unless ``predict_cls`` (then (B, 1 + N, out_dim))."""
        x = self.decoder_embed(tokens)
        batch, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, num_patches + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        index = ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        patches = torch.gather(patches, 1, index)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x if self.predict_cls else x[:, 1:])
