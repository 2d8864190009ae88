"""The fine-tuning learning rate as MAE sets it (``main_finetune.py`` l.267-270,
``util/lr_sched.py``): the peak is ``blr * effective batch / 256`` unless ``lr`` is given; each
optimizer step ``k`` reads it at the fractional epoch ``k / steps_per_epoch``, rising linearly from
0 over ``warmup_epochs``, then falling along a half cycle of cosine to ``min_lr``; a parameter
group's lr is that times its ``lr_scale`` (layer decay). Unlike ``engine.optim.lr_factor`` (the
pre-training schedule, ``(k + 1) / warmup`` and ``min_lr`` as a share of the peak), step 0 has lr 0
and ``min_lr`` is absolute, as in MAE."""
from __future__ import annotations

import math

from ..config import FinetuneConfig


def peak_lr(cfg: FinetuneConfig) -> float:
    """``lr``, or ``blr * batch_size / 256`` (the linear scaling rule) when ``lr`` is unset."""
    return cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256


def lr_at(step: int, steps_per_epoch: int, cfg: FinetuneConfig) -> float:
    """The lr of optimizer step ``step`` (0-based) before layer decay."""
    peak, epoch = peak_lr(cfg), step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return peak * epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / max(1e-12, cfg.epochs - cfg.warmup_epochs)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
