"""Fixed 2-D sine-cosine position embeddings (MAE), so no parameter learns positions."""
from __future__ import annotations

import torch


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1).double() * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Return (1, [1 +] grid_size**2, dim) embeddings in MAE's ``get_2d_sincos_pos_embed``
    layout: the first half of the channels encodes the column (x), the second the row (y), so
    tables (and the models trained with them) are interchangeable with MAE-layout ones.

    The CLS slot (when present) is all zeros, as in MAE. Tokens are in row-major order.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, grid_x), _sincos_1d(dim // 2, grid_y)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)
