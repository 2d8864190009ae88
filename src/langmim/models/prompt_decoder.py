"""MILAN's prompting decoder: the CLS and visible tokens are fixed prompts, only the mask
tokens are updated.

After ``decoder_embed``, mask tokens and the decoder's sin-cos positions, the sequence splits
into prompts (CLS + visible tokens, never touched by any block) and queries (the mask tokens).
In every block the queries attend, from LN(queries), to the whole sequence made of the prompts
as they are (no LayerNorm) and LN(queries); the attention residual and the MLP update the
queries only. The tokens are then put back in patch order, ``decoder_norm``, ``decoder_pred``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from .pos_embed import sincos_2d
from .vit import init_transformer_weights


class PromptingBlock(nn.Module):
    """One decoder block: cross-attention of the mask tokens to prompts + themselves, then MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = norm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, prompts: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """prompts (B, P, W), queries (B, M, W) -> updated queries (B, M, W)."""
        normed = self.norm1(queries)
        # Keys and values come from [prompts, LN(queries)]; attention does not depend on the
        # order of the keys, so this equals the paper's sequence in patch order.
        context = torch.cat([prompts, normed], dim=1)
        batch, length, width = context.shape
        qkv = self.qkv(context).reshape(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0][:, :, prompts.shape[1]:], qkv[1], qkv[2]
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, width)
        queries = queries + self.proj(attended)
        return queries + self.mlp(self.norm2(queries))


class PromptingDecoder(nn.Module):
    """Encoder tokens of CLS + K visible patches -> one prediction per token (B, 1 + N, out_dim)."""

    def __init__(self, in_width: int, width: int, depth: int, heads: int, out_dim: int, grid_size: int) -> None:
        super().__init__()
        self.decoder_embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("decoder_pos_embed", sincos_2d(width, grid_size, cls_token=True))
        self.decoder_blocks = nn.ModuleList([PromptingBlock(width, heads) for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.decoder_pred = nn.Linear(width, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_transformer_weights)

    def forward_tokens(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The decoder sequence before ``decoder_norm``, CLS first and patches in patch order."""
        x = self.decoder_embed(tokens)
        batch, num_patches = ids_restore.shape
        num_visible = x.shape[1] - 1
        # Positions of [visible..., masked...] in shuffled order: ids_shuffle = argsort(ids_restore).
        ids_shuffle = torch.argsort(ids_restore, dim=1)
        pos = self.decoder_pos_embed.expand(batch, -1, -1)
        patch_pos = torch.gather(pos[:, 1:], 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prompts = torch.cat([x[:, :1] + pos[:, :1], x[:, 1:] + patch_pos[:, :num_visible]], dim=1)
        queries = self.mask_token + patch_pos[:, num_visible:]
        for block in self.decoder_blocks:
            queries = block(prompts, queries)
        patches = torch.cat([prompts[:, 1:], queries], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.cat([prompts[:, :1], patches], dim=1)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.decoder_pred(self.decoder_norm(self.forward_tokens(tokens, ids_restore)))
