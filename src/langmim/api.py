"""Python API: ``langmim.load(path)`` -> a model with encode_image / encode_text, its tokenizer
and its preprocess transform, for any checkpoint the project writes."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision import transforms

from .config import Config, config_from_dict
from .engine.checkpoint import load_checkpoint, resolve_checkpoint
from .methods import build_method
from .methods.base import PretrainMethod
from .models.text import build_tokenizer


def build_preprocess(img_size: int) -> transforms.Compose:
    """PIL image -> normalised tensor at the model's resolution (mean = std = 0.5 per channel)."""
    from .data.scenes import IMAGE_MEAN, IMAGE_STD

    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])


def attach_inference_api(model: PretrainMethod, cfg: Config) -> PretrainMethod:
    model.config = cfg
    model.tokenizer = build_tokenizer(cfg.model.context_length, cfg.init.text)
    model.preprocess = build_preprocess(cfg.model.img_size)
    return model


def load(path: str | Path, device: str | torch.device = "cpu") -> PretrainMethod:
    """Load a checkpoint file, or the newest checkpoint of a run directory, in eval mode."""
    ckpt_path = resolve_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    cfg = config_from_dict(state["config"])
    model = build_method(cfg)
    model.load_state_dict(state["model"])
    model.checkpoint_path = str(ckpt_path)
    model.step = int(state["step"])
    return attach_inference_api(model, cfg).to(device).eval()
