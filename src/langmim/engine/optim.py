"""AdamW with decay and no-decay parameter groups; warm-up + cosine."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import TrainConfig


def decays(name: str, param: nn.Parameter, exempt: Sequence[str]) -> bool:
    """Whether weight decay applies: not to 1-D parameters (biases, norms, the logit scale),
    as in timm, MAE, SLIP and open_clip, nor to the names or name suffixes in ``exempt``."""
    return param.ndim > 1 and not name.endswith(tuple(exempt))


def param_groups(model: nn.Module, weight_decay: float, exempt: Sequence[str] = ()) -> list[dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if decays(n, p, exempt)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not decays(n, p, exempt)], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused kernels for plain tensors; FSDP's sharded (DTensor) parameters take the foreach path
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.no_weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=not cfg.fsdp
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 0, then a half-cycle cosine down to ``min_ratio`` of the peak."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    min_ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, min_ratio)
    )
