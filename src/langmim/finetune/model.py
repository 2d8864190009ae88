"""The fine-tuned classifier: a vision tower, stochastic depth per block, an optional ``fc_norm``
on the patch-token mean (MAE's ``global_pool``, which leaves the tower's final norm unused) and a
linear head; its parameter groups with layer-wise lr decay as MAE's ``util/lr_decay.py`` assigns
them; and what loading pre-trained weights into it leaves new and ignores."""
from __future__ import annotations

import copy

import torch
from timm.layers import DropPath
from torch import nn

from ..models.vit import MaskedVisionTransformer

NO_WEIGHT_DECAY = ("cls_token", "pos_embed")  # MAE's no_weight_decay() list, beside every 1-D parameter


class FineTuneClassifier(nn.Module):
    """Vision tower -> pooled tokens -> linear head.

    ``global_pool="avg"`` pools the patch tokens (CLS excluded); with ``fc_norm`` they are taken
    before the tower's final norm and normalised after pooling by a new LayerNorm (MAE's
    ``models_vit.py``: the final norm is deleted there, frozen and unused here so the tower keeps
    its keys), without it after the final norm. ``"token"`` takes the normed CLS token. The tower is
    copied unless ``copy_tower=False`` (``langmim finetune`` trains the loaded run's own tower).
    """

    def __init__(self, visual: MaskedVisionTransformer, num_classes: int, drop_path: float, global_pool: str = "avg",
                 fc_norm: bool = False, head_init_std: float = 2e-5, copy_tower: bool = True) -> None:
        super().__init__()
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool must be 'avg' or 'token', got {global_pool!r}")
        self.visual = copy.deepcopy(visual) if copy_tower else visual
        self.global_pool = global_pool
        add_drop_path(self.visual, drop_path)
        self.fc_norm = nn.LayerNorm(self.visual.width, eps=1e-6) if fc_norm and global_pool == "avg" else None
        if self.fc_norm is not None:
            self.visual.norm.requires_grad_(False)
        self.head = nn.Linear(self.visual.width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)  # MAE: 2e-5
        nn.init.zeros_(self.head.bias)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The features the head reads."""
        if self.fc_norm is not None:
            return self.fc_norm(self.visual.forward_blocks(images)[:, 1:].mean(dim=1))
        return self.visual.pool(self.visual.forward_features(images), "mean" if self.global_pool == "avg" else "cls")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(images))

    def classifier_state(self) -> dict[str, torch.Tensor]:
        """The weights beside the tower (``fc_norm``, ``head``), as saved next to the run's model."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("visual.")}


def add_drop_path(visual: MaskedVisionTransformer, drop_path: float) -> None:
    """Stochastic depth in every block of ``visual``, in place: timm's rule, rates rising linearly
    over the blocks from 0 to ``drop_path``."""
    depth = len(visual.blocks)
    for i, block in enumerate(visual.blocks):
        rate = drop_path * i / max(1, depth - 1)
        block.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
        block.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the rest (final norm, fc_norm,
    head): MAE's ``get_layer_id_for_vit`` with ``num_layers = depth + 1``."""
    if name.startswith(("visual.patch_embed", "visual.cls_token", "visual.pos_embed")):
        return 0
    if name.startswith("visual.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """One param group per (layer, decayed or not) of the trainable parameters of ``model`` (a
    tower under ``visual.``, whatever else beside it counting as the head), each with its
    ``lr_scale`` = layer_decay ** (depth + 1 - layer); no decay on 1-D parameters, the CLS
    token and the position embedding (MAE's ``param_groups_lrd``)."""
    depth = len(model.visual.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = param.ndim > 1 and not name.endswith(NO_WEIGHT_DECAY)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer),
        })
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def key_report(classifier: FineTuneClassifier, pretrained: dict[str, torch.Tensor] | None) -> dict[str, list[str]]:
    """What loading ``pretrained`` (the run's whole state dict, tower under ``visual.``) into the
    classifier leaves ``new`` (initialised here: MAE's ``missing_keys``), ``ignored`` (kept in the
    run's file, not fine-tuned: a decoder, a text tower) and ``unused`` (loaded but bypassed: the
    final norm under ``fc_norm``)."""
    own = set(classifier.state_dict())
    given = set(pretrained or ())
    unused = sorted(f"visual.{n}" for n, p in classifier.visual.named_parameters() if not p.requires_grad and f"visual.{n}" in given)
    return {"new": sorted(own - given), "ignored": sorted(given - own), "unused": unused}
