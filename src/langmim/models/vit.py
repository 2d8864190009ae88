"""Masked ViT encoder: timm blocks, fixed sin-cos positions, runs on all patches or a subset.

The parameter names follow timm's ``VisionTransformer`` (``patch_embed``, ``cls_token``,
``pos_embed``, ``blocks``, ``norm``) so the vision tower exports to timm without renaming.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention, Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .pos_embed import sincos_2d


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_blocks(width: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.Sequential:
    """Pre-norm timm blocks (LayerNorm eps 1e-6); attention uses scaled_dot_product_attention."""
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(
        *[Block(width, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
    )


def cls_attention(attn: Attention, x: torch.Tensor, num_prefix: int = 1) -> torch.Tensor:
    """Softmax attention of a timm ``Attention`` from the CLS query (token 0) to the patch
    tokens (those after the ``num_prefix`` CLS and register tokens), averaged over heads: (B, N)."""
    batch, length, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights.mean(dim=1)[:, 0, num_prefix:]


class MaskedVisionTransformer(nn.Module):
    """ViT with a CLS token whose forward takes optional ``ids_keep``: the encoder then pays
    only for the kept (visible) patches, as in MAE."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.width = width
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        self.grid_size = self.patch_embed.grid_size[0]
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", sincos_2d(width, self.grid_size, cls_token=True))
        self.blocks = vit_blocks(width, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_transformer_weights)

    def embed(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings plus positions (only the ``ids_keep`` patches if given), CLS first."""
        tokens = self.patch_embed(images) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (timm's API)."""
        self.grad_checkpointing = enable

    def forward_blocks(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the last block, before the final norm (MAE's fine-tuning pools these into its ``fc_norm``)."""
        x = self.embed(images, ids_keep)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)

    def forward_features(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the final norm: (B, 1 + N, D), or (B, 1 + K, D) for K kept patches."""
        return self.norm(self.forward_blocks(images, ids_keep))

    def forward_with_cls_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All tokens after the final norm, and the last block's attention from the CLS query to
        the N patch keys averaged over heads (B, N): what MILAN's teacher masks by."""
        *blocks, last = self.blocks
        x = self.embed(images)
        for block in blocks:
            x = block(x)
        attention = cls_attention(last.attn, last.norm1(x))
        return self.norm(last(x)), attention

    @staticmethod
    def pool(tokens: torch.Tensor, kind: str = "mean") -> torch.Tensor:
        """``mean`` of the patch tokens (CLS excluded; RILS's pooling) or the ``cls`` token."""
        if kind == "mean":
            return tokens[:, 1:].mean(dim=1)
        if kind == "cls":
            return tokens[:, 0]
        raise ValueError(f"pool must be 'mean' or 'cls', got {kind!r}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(images))
