"""Exports for the libraries that run the fine-tuning and dense protocols.

Each writes, into one folder: the renamed vision tower in that library's own container (a pickle
of tensors only, so it reloads with ``torch.load(..., weights_only=True)``), ``langmim_export.json``
(the normalisation, image and patch size, source and target position grid, the method and step),
and an example config for the library with the checkpoint path and the normalisation filled in.

- ``mae``: ``{"model": state_dict}`` as MAE's and MILAN's ``main_finetune.py --finetune`` read it
  (``models_vit.VisionTransformer``: timm's names, which are langmim's).
- ``mmseg``: mmsegmentation's ``MAE`` backbone keys, as ``tools/model_converters/beit2mmseg.py``
  writes them (a flat dict): ``layers.N.ln1``, ``attn.qkv`` with its full bias (mmseg builds the
  MAE backbone with ``bias=True``, not BEiT's q/v bias), ``ffn.layers.0.0`` / ``ffn.layers.1``,
  and the layer scales ``gamma_1`` / ``gamma_2`` at 1 (langmim's blocks have none).
- ``detectron2``: a detectron2-native checkpoint of ViTDet's backbone, ``{"model": {"backbone.net.*"}}``,
  loaded by ``train.init_checkpoint`` without ``?matching_heuristics=True``; ViTDet's ``ViT`` has
  no CLS token and no final norm, so neither is carried (its position table keeps the CLS slot).
- ``beit``: ``{"model": state_dict}`` for BEiT's ``run_class_finetuning.py``: the qkv weight
  without bias plus ``q_bias`` and ``v_bias``. The key bias is dropped exactly: it adds
  ``q . b_k`` to every logit of a query's row, which the softmax cancels. Layer scales are 1.

Position tables are resampled to the target recipe's grid (``--image-size``; 224 px, or mmseg's
512 px crop) by bicubic interpolation of the patch positions (align_corners=False, no antialias)
with the CLS position kept, as MAE's ``interpolate_pos_embed``, mmseg's ``resize_abs_pos_embed``,
detectron2's ``get_abs_pos`` and timm's ``resample_abs_pos_embed(antialias=False)`` do; at the
source grid the table is carried unchanged.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import LangmimError
from .files import refuse_link, write_atomic
from .io import atomic_save
from .methods.base import PretrainMethod
from .transforms import IMAGE_MEAN, IMAGE_STD

SIDECAR = "langmim_export.json"
Entries = Iterator[tuple[str, torch.Tensor]]


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + g*g, D) position table -> (1, 1 + grid*grid, D): the CLS position kept, the patch
    positions resampled bicubically (align_corners=False); unchanged when g == grid."""
    source = round((pos.shape[1] - 1) ** 0.5)
    if source == grid:
        return pos.detach().clone()
    patches = pos[:, 1:].reshape(1, source, source, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([pos[:, :1].detach(), patches], dim=1)


def layer_scales(width: int, prefix: str) -> Entries:
    """Layer scales of 1 for a library whose blocks multiply each branch by one (BEiT, mmseg)."""
    yield f"{prefix}.gamma_1", torch.ones(width)
    yield f"{prefix}.gamma_2", torch.ones(width)


def mae_keys(name: str, value: torch.Tensor, width: int) -> Entries:
    """MAE/MILAN ``models_vit``: timm's names, unchanged."""
    yield name, value


def mmseg_keys(name: str, value: torch.Tensor, width: int) -> Entries:
    """mmseg's MAE backbone, by beit2mmseg's renames; the final norm is not a key of it."""
    if name.startswith("norm."):
        return
    if name.startswith("patch_embed.proj."):
        yield name.replace("patch_embed.proj", "patch_embed.projection"), value
        return
    if not name.startswith("blocks."):
        yield name, value
        return
    _, index, rest = name.split(".", 2)
    renames = {"norm1.": "ln1.", "norm2.": "ln2.", "mlp.fc1.": "ffn.layers.0.0.", "mlp.fc2.": "ffn.layers.1."}
    for ours, theirs in renames.items():
        if rest.startswith(ours):
            rest = theirs + rest[len(ours):]
            break
    yield f"layers.{index}.{rest}", value
    if rest == "ln1.weight":
        yield from layer_scales(width, f"layers.{index}")


def detectron2_keys(name: str, value: torch.Tensor, width: int) -> Entries:
    """ViTDet's ``backbone.net``: no CLS token and no final norm in detectron2's ``ViT``."""
    if name == "cls_token" or name.startswith("norm."):
        return
    yield f"backbone.net.{name}", value


def beit_keys(name: str, value: torch.Tensor, width: int) -> Entries:
    """BEiT's ``modeling_finetune``: the qkv bias split into q_bias and v_bias (no key bias)."""
    if name.endswith("attn.qkv.bias"):
        prefix = name[: -len("qkv.bias")]
        q_bias, _, v_bias = value.chunk(3)
        yield f"{prefix}q_bias", q_bias
        yield f"{prefix}v_bias", v_bias
        return
    yield name, value
    if name.endswith(".norm1.weight"):
        yield from layer_scales(width, name[: -len(".norm1.weight")])


@dataclass(frozen=True)
class Target:
    library: str
    weights: str
    config: str
    image_size: int  # the recipe's input size, which sets the position grid
    keys: Callable[[str, torch.Tensor, int], Entries]
    container: str | None  # the key the state dict sits under, or None for a flat dict
    not_carried: str  # what the library initialises itself


TARGETS = {
    "mae": Target("MAE / MILAN main_finetune.py (models_vit.VisionTransformer)", "mae_checkpoint.pth", "finetune_mae.sh",
                  224, mae_keys, "model", "head, fc_norm (with --global_pool): fresh in main_finetune.py"),
    "mmseg": Target("mmsegmentation 1.x, backbone type='MAE'", "mmseg_mae_backbone.pth", "mae-upernet_ade20k-512x512_langmim.py",
                    512, mmseg_keys, None, "layers.N.attn.relative_position_bias_table (zeros in MAEAttention); the final "
                    "norm (final_norm=False in the recipe)"),
    "detectron2": Target("detectron2 ViTDet (SimpleFeaturePyramid(net=ViT))", "vitdet_backbone.pth",
                         "mask_rcnn_vitdet_langmim_100ep.py", 224, detectron2_keys, "model",
                         "backbone.net.blocks.N.attn.rel_pos_h/rel_pos_w (zeros, rel_pos_zero_init); cls_token and the "
                         "final norm, which ViTDet's ViT does not have"),
    "beit": Target("BEiT run_class_finetuning.py (modeling_finetune.VisionTransformer)", "beit_checkpoint.pth",
                   "finetune_beit.sh", 224, beit_keys, "model",
                   "head, fc_norm (--use_mean_pooling); relative position bias (use --disable_rel_pos_bias --abs_pos_emb)"),
}
TARGET_FORMATS = tuple(TARGETS)


def target_state(model: PretrainMethod, fmt: str, grid: int) -> dict[str, torch.Tensor]:
    """The vision tower's state dict under ``fmt``'s names, its position table at ``grid``."""
    width = model.config.model.width
    state = {}
    for name, value in model.visual.state_dict().items():
        if name == "pos_embed":
            value = resample_pos_embed(value, grid)
        for key, tensor in TARGETS[fmt].keys(name, value, width):
            state[key] = tensor.detach().clone().contiguous()
    return state


def architecture(model: PretrainMethod) -> dict:
    m = model.config.model
    return {"width": m.width, "depth": m.depth, "heads": m.heads, "mlp_ratio": m.mlp_ratio, "patch_size": m.patch_size}


def number(value: float) -> int | float:
    """4.0 -> 4: mmseg multiplies embed_dims by mlp_ratio for an nn.Linear size."""
    return int(value) if float(value).is_integer() else value


def evenly_spaced(depth: int, count: int = 4) -> list[int]:
    """``count`` block indexes ending at the last (ViTDet's global-attention blocks: 2, 5, 8, 11 of 12)."""
    return sorted({max(0, (i + 1) * depth // count - 1) for i in range(count)})


MMSEG_OUT_INDICES = {12: [3, 5, 7, 11], 24: [7, 11, 15, 23]}  # configs/mae (ViT-B), configs/beit (ViT-L)
MAE_MODELS = {(768, 12, 12, 16): "vit_base_patch16", (1024, 24, 16, 16): "vit_large_patch16", (1280, 32, 16, 14): "vit_huge_patch14"}
BEIT_MODELS = {(768, 12, 12, 16): "beit_base_patch16_224", (1024, 24, 16, 16): "beit_large_patch16_224"}


def named_model(models: dict, arch: dict, fallback: str) -> tuple[str, str]:
    """(the library's registered model name for this tower, or ``fallback``; a note when it has none)."""
    key = (arch["width"], arch["depth"], arch["heads"], arch["patch_size"])
    if key in models:
        return models[key], ""
    return fallback, (f"# No model of this size is registered there: add one named {fallback} with patch_size="
                      f"{arch['patch_size']}, embed_dim={arch['width']}, depth={arch['depth']}, num_heads={arch['heads']}, "
                      f"mlp_ratio={number(arch['mlp_ratio'])}, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6).\n")


def mae_config(weights: Path, arch: dict, size: int) -> str:
    model, note = named_model(MAE_MODELS, arch, "vit_langmim")
    command = ["python", "main_finetune.py", "--model", model, "--finetune", str(weights), "--input_size", str(size),
               "--global_pool", "--batch_size", "32", "--epochs", "100", "--blr", "5e-4", "--layer_decay", "0.65",
               "--weight_decay", "0.05", "--drop_path", "0.1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
               "--dist_eval", "--data_path", "/path/to/imagenet"]
    return ("#!/bin/sh\n# Fine-tune a langmim tower with MAE's (or MILAN's) main_finetune.py, run in that repository\n"
            "# (MAE's FINETUNE.md ViT-B recipe: 32 per GPU on 32 GPUs; lr = blr * effective batch / 256).\n"
            + note +
            "# NORMALISATION: langmim's towers take mean = std = (0.5, 0.5, 0.5); MAE's util/datasets.py hard-codes\n"
            "# ImageNet's IMAGENET_DEFAULT_MEAN/STD in build_transform: set mean = std = (0.5, 0.5, 0.5) there first.\n"
            + " ".join(shlex.quote(part) for part in command) + "\n")


def beit_config(weights: Path, arch: dict, size: int) -> str:
    model, note = named_model(BEIT_MODELS, arch, "beit_langmim")
    command = ["python", "run_class_finetuning.py", "--model", model, "--finetune", str(weights), "--model_key", "model",
               "--input_size", str(size), "--abs_pos_emb", "--disable_rel_pos_bias", "--layer_scale_init_value", "0.1",
               "--nb_classes", "1000", "--data_path", "/path/to/imagenet", "--output_dir", "/path/to/output",
               "--batch_size", "128", "--lr", "4e-3", "--update_freq", "1", "--warmup_epochs", "20", "--epochs", "100",
               "--layer_decay", "0.65", "--drop_path", "0.1", "--weight_decay", "0.05", "--mixup", "0.8", "--cutmix", "1.0"]
    return ("#!/bin/sh\n# Fine-tune a langmim tower with BEiT's run_class_finetuning.py (unilm/beit), run in that folder\n"
            "# (get_started_for_image_classification.md, BEiT-base self-supervised only: 8 GPUs).\n"
            + note +
            "# --abs_pos_emb: the tower's positions are absolute; --disable_rel_pos_bias: it has no relative bias.\n"
            "# The checkpoint's layer scales are 1 (any --layer_scale_init_value > 0 loads them; 0 drops them, same function).\n"
            "# NORMALISATION: mean = std = (0.5, 0.5, 0.5), BEiT's default; do not pass --imagenet_default_mean_and_std.\n"
            + " ".join(shlex.quote(part) for part in command) + "\n")


def mmseg_config(weights: Path, arch: dict, size: int) -> str:
    width, depth = arch["width"], arch["depth"]
    out_indices = MMSEG_OUT_INDICES.get(depth, evenly_spaced(depth))
    return f"""# mmsegmentation 1.x: UperNet on a langmim tower, modelled on
# configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py; put it in configs/mae/ and run
# tools/train.py on it. The checkpoint is already in mmseg's MAE backbone keys: do not run
# beit2mmseg.py or vit2mmseg.py on it.
# NORMALISATION: langmim's towers take mean = std = 0.5 (127.5 on 0-255 pixels), not ImageNet's.
_base_ = [
    '../_base_/models/upernet_mae.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
crop_size = ({size}, {size})
data_preprocessor = dict(
    size=crop_size,
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained={str(weights)!r},
    backbone=dict(
        type='MAE',
        img_size=({size}, {size}),
        patch_size={arch['patch_size']},
        embed_dims={width},
        num_layers={depth},
        num_heads={arch['heads']},
        mlp_ratio={number(arch['mlp_ratio'])},
        init_values=1.0,
        drop_path_rate=0.1,
        norm_cfg=dict(type='LN', eps=1e-6),
        out_indices={out_indices}),
    neck=dict(embed_dim={width}, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(
        in_channels=[{width}, {width}, {width}, {width}], num_classes=150, channels=768),
    auxiliary_head=dict(in_channels={width}, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=({size}, {size}), stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(num_layers={depth}, layer_decay_rate=0.65),
    constructor='LayerDecayOptimizerConstructor')

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=160000,
        by_epoch=False,
    )
]

# mixed precision
fp16 = dict(loss_scale='dynamic')

# By default, models are trained on 8 GPUs with 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
"""


def detectron2_config(weights: Path, arch: dict, size: int) -> str:
    depth = arch["depth"]
    global_blocks = evenly_spaced(depth)
    window_blocks = [i for i in range(depth) if i not in global_blocks]
    stride_note = "" if arch["patch_size"] == 16 else (
        f"# patch size {arch['patch_size']}: SimpleFeaturePyramid's scale_factors (4.0, 2.0, 1.0, 0.5) give strides\n"
        "# 4..32 only for a stride-16 backbone; adjust scale_factors and the RPN/ROI in_features.\n")
    return f"""# detectron2 ViTDet: Mask R-CNN on a langmim tower, modelled on
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py; put it beside that file and run
# tools/lazyconfig_train_net.py --config-file on it.
# The checkpoint is detectron2-native ({{"model": {{"backbone.net.*": ...}}}}): no matching heuristics.
# NORMALISATION: langmim's towers take mean = std = 127.5 on 0-255 RGB pixels, not ImageNet's.
{stride_note}from functools import partial
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from ..common.coco_loader_lsj import dataloader


model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.pixel_mean = [127.5, 127.5, 127.5]
model.pixel_std = [127.5, 127.5, 127.5]
model.input_format = "RGB"
model.backbone.net.patch_size = {arch['patch_size']}
model.backbone.net.embed_dim = {arch['width']}
model.backbone.net.depth = {depth}
model.backbone.net.num_heads = {arch['heads']}
model.backbone.net.mlp_ratio = {number(arch['mlp_ratio'])}
model.backbone.net.pretrain_img_size = {size}
model.backbone.net.pretrain_use_cls_token = True
model.backbone.net.window_block_indexes = {window_blocks}  # global attention in {global_blocks}

# Initialization and trainer settings
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = {str(weights)!r}


# Schedule
# 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# Optimizer
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers={depth}, lr_decay_rate=0.7)
optimizer.params.overrides = {{"pos_embed": {{"weight_decay": 0.0}}}}
"""


CONFIGS: dict[str, Callable[[Path, dict, int], str]] = {
    "mae": mae_config, "mmseg": mmseg_config, "detectron2": detectron2_config, "beit": beit_config,
}


def export_target(model: PretrainMethod, fmt: str, out: Path, image_size: int | None = None) -> Path:
    """Write ``model``'s vision tower for ``fmt`` (one of ``TARGET_FORMATS``) into the folder ``out``:
    the weights, ``langmim_export.json`` and the library's example config."""
    if fmt not in TARGETS:
        raise LangmimError(f"--format must be one of {', '.join(TARGET_FORMATS)} here; got {fmt!r}")
    target, m = TARGETS[fmt], model.config.model
    size = target.image_size if image_size is None else image_size
    if size <= 0 or size % m.patch_size:
        raise LangmimError(f"--image-size {size} is not a positive multiple of the tower's patch size {m.patch_size}")
    grid = size // m.patch_size
    out = Path(out)
    refuse_link(out)
    if out.exists() and not out.is_dir():
        raise LangmimError(f"--out '{out}' is a file; a {fmt} export is a folder")
    out.mkdir(parents=True, exist_ok=True)
    weights = (out / target.weights).resolve()
    state = target_state(model, fmt, grid)
    atomic_save({target.container: state} if target.container else state, out / target.weights)
    source_grid = m.img_size // m.patch_size
    sidecar = {
        "format": fmt, "library": target.library, "weights": target.weights, "config": target.config,
        "container": f"{{{target.container!r}: state_dict}}" if target.container else "state_dict (flat)",
        "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
        "mean_0_255": [v * 255 for v in IMAGE_MEAN], "std_0_255": [v * 255 for v in IMAGE_STD],
        "normalisation_note": "langmim's mean = std = 0.5, not ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)",
        "image_size": m.img_size, "patch_size": m.patch_size, "target_image_size": size,
        "source_grid": [source_grid, source_grid], "target_grid": [grid, grid],
        "pos_embed": "unchanged" if grid == source_grid else "bicubic (align_corners=False), CLS position kept",
        "architecture": architecture(model), "not_carried": target.not_carried,
        "method": model.config.method, "step": getattr(model, "step", None),
        "source_checkpoint": str(getattr(model, "checkpoint_path", "") or ""),
        "keys": {k: list(v.shape) for k, v in state.items()},
    }
    write_atomic(out / SIDECAR, json.dumps(sidecar, indent=1) + "\n")
    write_atomic(out / target.config, CONFIGS[fmt](weights, architecture(model), size))
    return out
