"""Export a langmim checkpoint for the field's libraries.

- ``timm``: the vision tower as a timm ``local-dir`` folder (``config.json`` + ``model.safetensors``):
  ``timm.create_model("local-dir:OUT", pretrained=True)``, or the architecture in ``config.json``
  with its ``model_args`` and a strict ``load_state_dict``. The state dict needs no renaming:
  langmim's tower uses timm's parameter names.
- ``open_clip``: a model with a text tower (CLIP, SigLIP, FLIP, SLIP, RILS) as an open_clip ``local-dir`` folder
  (``open_clip_config.json`` + ``open_clip_model.safetensors``): vision + text + projection + logit
  scale, loaded by ``open_clip.create_model("local-dir:OUT")``. open_clip's patch embedding has no
  bias, so ours is folded into the position embedding; its CLS token carries its position
  separately.
- ``safetensors``: the model's whole state dict, with the resolved config as metadata.
- ``mae``, ``mmseg``, ``detectron2``, ``beit``: the vision tower renamed for MAE's/MILAN's
  fine-tuning scripts, mmsegmentation's MAE backbone, detectron2's ViTDet and BEiT, with a sidecar
  and an example config (``export_targets.py``).
Every export carries its preprocessing (size, mean, std, interpolation).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save

from .config import to_dict
from .errors import LangmimError
from .export_targets import TARGET_FORMATS, export_target
from .files import write_atomic
from .method_specs import methods_with
from .methods.base import PretrainMethod
from .model_card import write_model_card
from .models.pretrained import sentence_transformer_parts
from .models.text import sentence_transformer_folder
from .transforms import IMAGE_MEAN, IMAGE_STD

FORMATS = ("timm", "open_clip", "safetensors", *TARGET_FORMATS)
TIMM_ARCHITECTURE = "vit_base_patch16_224"  # its constructor, sized by model_args


def preprocess_cfg(img_size: int) -> dict:
    return {"size": img_size, "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def timm_model_args(model: PretrainMethod) -> dict:
    m = model.config.model
    return {
        "img_size": m.img_size, "patch_size": m.patch_size, "embed_dim": m.width, "depth": m.depth,
        "num_heads": m.heads, "mlp_ratio": m.mlp_ratio, "qkv_bias": True, "class_token": True,
        "global_pool": "avg", "fc_norm": False,  # mean of the patch tokens after the final norm, as langmim pools
    }


def timm_export(model: PretrainMethod) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, timm config.json) of the vision tower."""
    size = model.config.model.img_size
    config = {
        "architecture": TIMM_ARCHITECTURE,
        "num_classes": 0,
        "model_args": timm_model_args(model),
        "pretrained_cfg": {
            "input_size": [3, size, size], "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
            "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "num_classes": 0,
        },
    }
    return {k: v.detach().clone().contiguous() for k, v in model.visual.state_dict().items()}, config


def open_clip_model_cfg(model: PretrainMethod) -> dict:
    m = model.config.model
    return {
        "embed_dim": m.embed_dim,
        "custom_text": True,
        "vision_cfg": {
            "image_size": m.img_size, "patch_size": m.patch_size, "width": m.width, "layers": m.depth,
            "head_width": m.width // m.heads, "mlp_ratio": m.mlp_ratio, "no_ln_pre": True, "pool_type": "avg",
            "norm_kwargs": {"eps": 1e-6},
        },
        "text_cfg": text_cfg(model),
    }


def text_cfg(model: PretrainMethod) -> dict:
    """open_clip's ``text_cfg``: its causal transformer's sizes, or the Hugging Face model a
    sentence-transformers text tower wraps (the folder must stay on disk)."""
    m = model.config.model
    folder = sentence_transformer_folder(model.config.init.text)
    if folder is not None:
        transformer, pooler = sentence_transformer_parts(folder)
        return {"context_length": m.context_length, "hf_model_name": str(transformer), "hf_tokenizer_name": str(transformer),
                "hf_pooler_type": pooler, "hf_proj_type": "linear"}
    return {
        "context_length": m.context_length, "vocab_size": model.text.vocab_size, "width": m.text_width,
        "heads": m.text_heads, "layers": m.text_depth,
    }


def open_clip_export(model: PretrainMethod) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, open_clip_config.json) of a model with a text tower."""
    if not model.has_text:
        raise LangmimError(f"--format open_clip needs a checkpoint with a text tower ({methods_with('has_text')}); "
                           f"this one is {model.config.method} (use --format timm)")
    if model.config.model.text_quick_gelu:
        raise LangmimError("--format open_clip: open_clip's quick_gelu switches both towers and langmim's vision tower uses GELU; "
                           "export with --format safetensors or timm")
    v = model.visual
    pos = v.pos_embed[0].detach().clone()
    pos[1:] += v.patch_embed.proj.bias.detach()  # open_clip's conv1 has no bias
    state = {
        "visual.conv1.weight": v.patch_embed.proj.weight,
        "visual.class_embedding": v.cls_token.reshape(-1),
        "visual.positional_embedding": pos,
        "visual.ln_post.weight": v.norm.weight,
        "visual.ln_post.bias": v.norm.bias,
        "visual.proj": model.image_projection,
        "logit_scale": model.logit_scale,
    }
    renames = {
        "norm1": "ln_1", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    }
    for name, value in v.blocks.state_dict().items():
        index, rest = name.split(".", 1)
        for ours, theirs in renames.items():
            if rest.startswith(ours):
                rest = theirs + rest[len(ours):]
                break
        state[f"visual.transformer.resblocks.{index}.{rest}"] = value
    state.update({f"text.{k}": t for k, t in model.text.state_dict().items()})
    model_cfg = open_clip_model_cfg(model)
    if model.logit_bias is not None:  # the sigmoid loss's learnt bias (SigLIP)
        state["logit_bias"] = model.logit_bias
        model_cfg["init_logit_bias"] = float(model.logit_bias)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(model.config.model.img_size)}
    return {k: t.detach().clone().contiguous() for k, t in state.items()}, config


def export(model: PretrainMethod, fmt: str, out: Path, image_size: int | None = None) -> Path:
    """Write ``model`` in ``fmt`` to ``out`` (a folder for timm/open_clip and the target libraries, a
    file for safetensors); ``image_size`` sets a target library's position grid (its recipe's by default)."""
    if fmt in TARGET_FORMATS:
        return export_target(model, fmt, Path(out), image_size)
    metadata = {"langmim_config": json.dumps(to_dict(model.config)), "source_checkpoint": str(getattr(model, "checkpoint_path", "")),
                "step": str(getattr(model, "step", None) or "")}
    if fmt == "safetensors":
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        write_atomic(out, save(state, metadata={**metadata, "preprocess_cfg": json.dumps(preprocess_cfg(model.config.model.img_size))}))
        return out
    if fmt == "timm":
        state, config = timm_export(model)
        names = ("config.json", "model.safetensors")
    elif fmt == "open_clip":
        state, config = open_clip_export(model)
        names = ("open_clip_config.json", "open_clip_model.safetensors")
    else:
        raise LangmimError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / names[0], json.dumps(config, indent=1))
    write_atomic(out / names[1], save(state, metadata=metadata))  # written whole (the mode umask gives), never through a link
    if fmt == "open_clip" and hasattr(model.tokenizer, "save_pretrained"):
        model.tokenizer.save_pretrained(out)  # open_clip's local-dir reads a Hugging Face tokenizer from the folder
    write_model_card(model, fmt, out)
    return out
