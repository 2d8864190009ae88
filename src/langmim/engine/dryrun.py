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
from ..data.scene_labels import random_scene_labels
from ..errors import LangmimError
from ..method_specs import check_method_rules, method_spec
from ..methods import build_method
from ..models.teacher import build_library_teacher, parse_teacher_source
from ..models.text import build_tokenizer
from .loop import Trainer
from .optim import decays

DRY_BATCH = 2


def build_for_dry_run(cfg: Config) -> torch.nn.Module:
    source = parse_teacher_source(cfg.settings.teacher.source) if method_spec(cfg.method).needs_teacher else None
    if source is not None and source.kind in ("openclip", "timm") and not Path(source.location).exists():
        print(f"teacher weights '{source.location}' not on disk: random {source.model} teacher for the dry run")
        teacher = build_library_teacher(source, cfg.model.img_size // cfg.model.patch_size, random_weights=True)
        return build_method(cfg, with_teacher=True, teacher=teacher)
    return build_method(cfg, with_teacher=True)


def synthetic_batch(cfg: Config, method: torch.nn.Module, batch_size: int = DRY_BATCH) -> dict[str, torch.Tensor]:
    """Random images, masking noise, captions (image-text methods), scene targets and views (methods
    that train on them) of ``batch_size`` samples."""
    size, generator = cfg.model.img_size, torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1,
        "index": torch.arange(batch_size),  # the trainer adds "step"
        "noise": torch.stack([masking_noise(cfg.train.seed, i, method.visual.num_patches) for i in range(batch_size)]),
    }
    if method.has_text:
        captions = [f"a photo of a dog number {i}, on the left." for i in range(batch_size)]
        batch["text"] = build_tokenizer(cfg.model.context_length, cfg.init.text)(captions)
    if method.needs_scene_labels:
        batch.update(random_scene_labels(batch_size, method.visual.num_patches, generator))
    if method.spec.needs_views:
        batch["views"] = torch.rand(batch_size, 2, 3, size, size, generator=generator) * 2 - 1
    return batch


def count(module: torch.nn.Module | None, trainable: bool | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def activations(module: torch.nn.Module | None) -> str:
    """The MLP activations a built tower actually uses: GELU, QuickGELU, or both."""
    from open_clip.transformer import QuickGELU

    if module is None:
        return "none"
    found = {type(m).__name__ for m in module.modules() if isinstance(m, (torch.nn.GELU, QuickGELU))}
    return " + ".join(sorted(found)) or "none"


def augmentation(cfg: Config) -> str:
    d = cfg.data
    if d.name == "fashion-scenes" and d.world == "web":
        return f"the web world's scenes and captions (data.web.*){', flips that swap left and right in the caption' if d.augment else ''}"
    if d.name == "fashion-scenes":
        extra = ", flips that swap left and right in the caption, shifts of up to 3 px" if d.augment else ""
        return f"fashion-scenes' own layouts (plain share {d.plain_share}{extra})"
    if not d.augment:
        return f"resize + centre crop to {cfg.model.img_size} ({d.interpolation})"
    flip = " + horizontal flip" if d.hflip else ", no flip"
    return f"RandomResizedCrop({cfg.model.img_size}, scale=({d.crop_scale[0]}, {d.crop_scale[1]}), {d.interpolation}){flip}"


def weight_decay_groups(method: torch.nn.Module, cfg: Config) -> str:
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    decayed = [p for n, p in named if decays(n, p, cfg.train.no_weight_decay)]
    by_name = sorted({e for n, p in named for e in cfg.train.no_weight_decay if p.ndim > 1 and n.endswith(e)})
    kept = len(named) - len(decayed)
    exempt = f"1-D (biases, norms, scales){' and ' + ', '.join(by_name) if by_name else ''}"
    return (f"wd {cfg.train.weight_decay} on {len(decayed)} tensors ({sum(p.numel() for p in decayed) / 1e6:.2f}M); "
            f"none on {kept}: {exempt}")


def recipe_lines(cfg: Config, method: torch.nn.Module) -> list[str]:
    """The training recipe as built: what a reader compares with a release's."""
    t = cfg.train
    return [
        f"augmentation: {augmentation(cfg)}",
        f"optimizer: AdamW lr {t.lr:g} (min {t.min_lr:g}), betas ({t.betas[0]}, {t.betas[1]}), eps {t.eps:g}, "
        f"{t.warmup_steps} warm-up steps then cosine over {t.steps} steps, batch {t.batch_size}",
        f"gradient clipping: {f'max norm {t.grad_clip:g}' if t.grad_clip > 0 else 'none'}",
        f"weight decay: {weight_decay_groups(method, cfg)}",
        f"activations: vision {activations(method.visual)}, text {activations(getattr(method, 'text', None))}, "
        f"teacher {activations(getattr(method, 'teacher', None))}",
        f"precision: {t.precision}",
    ]


def dry_run(cfg: Config) -> dict[str, float]:
    check_method_rules(cfg)
    torch.manual_seed(cfg.train.seed)
    method = build_for_dry_run(cfg)
    method.lock_towers(cfg)  # as the trainer will: a locked tower is neither trained nor decayed
    recipe = recipe_lines(cfg, method)
    cfg.train.batch_size, cfg.train.accum_freq, cfg.train.fsdp = DRY_BATCH, 1, False
    trainer = Trainer(cfg, method, torch.device("cpu"))
    with FlopCounterMode(display=False) as flops:
        scalars = trainer.step(synthetic_batch(cfg, method))
    if not math.isfinite(scalars["loss"]):
        raise LangmimError(f"dry run: the synthetic step gave loss {scalars['loss']}")
    report = {
        "vision_encoder_params": count(method.visual),
        "text_tower_params": count(getattr(method, "text", None)),
        "decoder_params": count(getattr(method, "decoder", None)),
        "frozen_teacher_params": count(getattr(method, "teacher", None)),
        "trainable_params": count(method, trainable=True),
        "train_gflops_per_image": flops.get_total_flops() / DRY_BATCH / 1e9,
        "loss": scalars["loss"],
    }
    m = cfg.model
    print(f"{cfg.method} {m.arch}: {m.img_size} px, patch {m.patch_size}, width {m.width}, depth {m.depth}")
    for key, value in report.items():
        print(f"  {key}: {value / 1e6:.2f}M" if key.endswith("params") else f"  {key}: {value:.3f}")
    print("recipe:")
    for line in recipe:
        print(f"  {line}")
    print("dry run ok: one step on a synthetic batch of 2")
    return report
