"""``langmim pretrain --dry-run``: build the configured model, print its parameter counts and
training FLOPs per image, and take one optimisation step on a tiny synthetic batch, without
touching data or the run directory. A MILAN teacher whose weights are not on disk is built
with random weights for the dry run."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config
from ..data.pretrain import masking_noise
from ..errors import LangmimError
from ..methods import build_method
from ..models.teacher import OpenCLIPTeacher
from ..models.text import build_tokenizer
from .loop import Trainer

DRY_BATCH = 2


def build_for_dry_run(cfg: Config) -> torch.nn.Module:
    source = cfg.teacher.source or ""
    if cfg.method == "milan" and source.startswith("openclip:") and not Path(source.split(":", 2)[-1]).is_file():
        from ..methods.milan import MILAN

        print(f"teacher weights '{source.split(':', 2)[-1]}' not on disk: random {source.split(':')[1]} teacher for the dry run")
        teacher = OpenCLIPTeacher(source.split(":")[1], None)
        cfg.teacher.embed_dim = teacher.embed_dim
        return MILAN(cfg, teacher)
    return build_method(cfg, with_teacher=True)


def synthetic_batch(cfg: Config, method: torch.nn.Module, batch_size: int = DRY_BATCH) -> dict[str, torch.Tensor]:
    """Random images, masking noise and (for image-text methods) captions of ``batch_size`` samples."""
    size, generator = cfg.model.img_size, torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1,
        "index": torch.arange(batch_size),
        "noise": torch.stack([masking_noise(cfg.train.seed, i, method.visual.num_patches) for i in range(batch_size)]),
    }
    if method.has_text:
        captions = [f"a photo of a dog number {i}, on the left." for i in range(batch_size)]
        batch["text"] = build_tokenizer(cfg.model.context_length, cfg.init.text)(captions)
    return batch


def count(module: torch.nn.Module | None, trainable: bool | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def dry_run(cfg: Config) -> dict[str, float]:
    cfg.train.batch_size, cfg.train.accum_freq, cfg.train.fsdp = DRY_BATCH, 1, False
    torch.manual_seed(cfg.train.seed)
    method = build_for_dry_run(cfg)
    trainer = Trainer(cfg, method, torch.device("cpu"))
    with FlopCounterMode(display=False) as flops:
        figures = trainer.step(synthetic_batch(cfg, method))
    if not math.isfinite(figures["loss"]):
        raise LangmimError(f"dry run: the synthetic step gave loss {figures['loss']}")
    report = {
        "vision_encoder_params": count(method.visual),
        "text_tower_params": count(getattr(method, "text", None)),
        "decoder_params": count(getattr(method, "decoder", None)),
        "frozen_teacher_params": count(getattr(method, "teacher", None)),
        "trainable_params": count(method, trainable=True),
        "train_gflops_per_image": flops.get_total_flops() / DRY_BATCH / 1e9,
        "loss": figures["loss"],
    }
    m = cfg.model
    print(f"{cfg.method} {m.arch}: {m.img_size} px, patch {m.patch_size}, width {m.width}, depth {m.depth}")
    for key, value in report.items():
        print(f"  {key}: {value / 1e6:.2f}M" if key.endswith("params") else f"  {key}: {value:.3f}")
    print("dry run ok: one step on a synthetic batch of 2")
    return report
