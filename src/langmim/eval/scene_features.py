"""Frozen features of annotated scenes, for the scene-level tasks (probes, detection, segmentation).

A ViT's patch grid is coarse: the demo's 16 px patches give 4x4 tokens on a 64 px scene, about one
token per item. `dense_patch_tokens` refines it without touching the model: the image is run
``refine**2`` times, each time translated by a fraction of a patch (a black border fills what
moves in), and the token grids are interleaved, so token (i, j) of the result is the encoder's
token for the patch window centred at ((j + 0.5) * stride, (i + 0.5) * stride) with
stride = patch / refine. Every pass is an ordinary forward at the trained resolution and
position table (no interpolation), on a translation of at most half a patch, which
pre-training's own jitter and shift already cover.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.scene_labels import MAX_ITEMS
from ..data.scenes import COLOURS, POSITIONS, SIZES, collate_scenes
from ..transforms import to_float
from .inference import evaluating


def shift_images(images: Tensor, dx: int, dy: int) -> Tensor:
    """uint8 (B, 3, H, W) translated so that output pixel (y, x) = input (y + dy, x + dx); what
    comes in from outside the canvas is black (the scenes' background)."""
    _, _, height, width = images.shape
    padded = F.pad(images, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)))
    x0, y0 = max(dx, 0), max(dy, 0)
    return padded[:, :, y0:y0 + height, x0:x0 + width]


def window_offsets(patch: int, refine: int) -> list[int]:
    """Pixel offsets of the ``refine`` translated patch grids along one axis, centred so the
    refined grid's token k sits at (k + 0.5) * patch / refine (what bilinear upsampling assumes)."""
    if patch % refine or (patch - patch // refine) % 2:
        raise ValueError(f"refine={refine} must divide the patch size {patch} into an even split")
    step = patch // refine
    return [q * step - (patch - step) // 2 for q in range(refine)]


@torch.no_grad()
def dense_patch_tokens(model: torch.nn.Module, images: Tensor, patch: int, refine: int) -> Tensor:
    """uint8 (B, 3, H, W) -> patch tokens (B, G * refine, G * refine, D) on the refined grid."""
    offsets = window_offsets(patch, refine)
    grid = images.shape[-1] // patch
    out = None
    for qy, dy in enumerate(offsets):
        for qx, dx in enumerate(offsets):
            tokens = model.visual.forward_features(to_float(shift_images(images, dx, dy)))[:, 1:].float()
            tokens = tokens.reshape(len(images), grid, grid, -1)
            if out is None:
                out = tokens.new_empty(len(images), grid * refine, grid * refine, tokens.shape[-1])
            out[:, qy::refine, qx::refine] = tokens
    return out


@torch.no_grad()
def scene_tokens(model: torch.nn.Module, scenes: Dataset, patch: int, refine: int, batch_size: int = 256) -> dict[str, Tensor]:
    """Encoder tokens of every scene, the encoder in eval mode: ``tokens`` (n, 1 + N, D) of the
    plain forward (CLS first) and ``dense`` (n, G * refine, G * refine, D) of `dense_patch_tokens`."""
    tokens, dense = [], []
    with evaluating(model) as device:
        for batch in DataLoader(scenes, batch_size=batch_size, collate_fn=collate_scenes):
            images = batch["image"].to(device)
            tokens.append(model.visual.forward_features(to_float(images)).float().cpu())
            dense.append(dense_patch_tokens(model, images, patch, refine).cpu())
    return {"tokens": torch.cat(tokens), "dense": torch.cat(dense)}


def scene_annotations(scenes: Dataset) -> dict[str, Tensor]:
    """What every scene holds, as tensors: per item (n, MAX_ITEMS), padded with -1, ``labels``,
    ``colours`` and ``sizes`` (indices into COLOURS and SIZES), ``cells`` (into POSITIONS) and
    ``boxes`` (n, MAX_ITEMS, 4); ``count`` (n,) and the pixel ``mask`` (n, H, W) uint8."""
    colours, sizes = list(COLOURS), list(SIZES)
    samples = [scenes[i] for i in range(len(scenes))]
    fields = {name: torch.full((len(samples), MAX_ITEMS), -1, dtype=torch.int64) for name in ("labels", "colours", "sizes", "cells")}
    boxes = torch.full((len(samples), MAX_ITEMS, 4), -1, dtype=torch.int64)
    for row, sample in enumerate(samples):
        k = len(sample["labels"])
        fields["labels"][row, :k] = sample["labels"]
        fields["colours"][row, :k] = torch.tensor([colours.index(c) for c in sample["colours"]])
        fields["sizes"][row, :k] = torch.tensor([sizes.index(s) for s in sample["sizes"]])
        fields["cells"][row, :k] = torch.tensor([POSITIONS.index(p) for p in sample["positions"]])
        boxes[row, :k] = sample["boxes"]
    return {**fields, "boxes": boxes, "count": (fields["labels"] >= 0).sum(dim=1),
            "mask": torch.stack([s["mask"] for s in samples]).to(torch.uint8)}


def cell_pooling_weights(canvas: int, patch: int) -> Tensor:
    """(9, N) weights that pool the N patch tokens into one feature per cell of the 3x3 grid:
    each token counts by the area its patch shares with the square a large item in that cell
    covers (side SIZES["large"] * canvas, centred on the cell centre), normalised to sum to 1."""
    grid, side = canvas // patch, round(SIZES["large"] * canvas)
    starts = torch.arange(grid) * patch

    def overlap(centre: float) -> Tensor:  # (grid,) 1-D overlap of each patch with the item span
        lo, hi = centre - side / 2, centre + side / 2
        return ((starts + patch).clamp(max=hi) - starts.clamp(min=lo)).clamp(min=0)

    weights = []
    for cell in range(len(POSITIONS)):
        row, col = divmod(cell, 3)
        area = overlap(canvas * (row + 1) / 4)[:, None] * overlap(canvas * (col + 1) / 4)[None, :]
        weights.append(area.flatten() / area.sum())
    return torch.stack(weights)
