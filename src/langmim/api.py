"""Python API: ``langmim.load(path)`` -> a model with encode_image / encode_text, its tokenizer
and its preprocess transform, for any checkpoint the project writes."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision import transforms

from .config import Config, config_from_dict
from .engine.checkpoint import load_checkpoint, resolve_checkpoint
from .errors import CheckpointError
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


def read_safetensors_export(path: Path) -> tuple[Config, dict[str, torch.Tensor], int | None]:
    """(config, state dict, step) of a ``langmim export --format safetensors`` file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({err})") from None
    if "langmim_config" not in metadata:
        raise CheckpointError(f"'{path}' has no langmim_config metadata: not written by `langmim export --format safetensors`")
    step = metadata.get("step")
    return config_from_dict(json.loads(metadata["langmim_config"])), state, int(step) if step else None


def load(path: str | Path, device: str | torch.device = "cpu") -> PretrainMethod:
    """Load a checkpoint file, the newest checkpoint of a run directory, or a safetensors export,
    in eval mode."""
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        ckpt_path = Path(path)
        cfg, weights, step = read_safetensors_export(ckpt_path)
    else:
        ckpt_path = resolve_checkpoint(path)
        state = load_checkpoint(ckpt_path)
        cfg, weights, step = config_from_dict(state["config"]), state["model"], int(state["step"])
    model = build_method(cfg)
    model.load_state_dict(weights)
    model.checkpoint_path = str(ckpt_path)
    model.step = step
    return attach_inference_api(model, cfg).to(device).eval()


def run_name(model: PretrainMethod) -> str:
    """The name results are filed under: the run directory's (or a safetensors export's) name."""
    path = Path(model.checkpoint_path)
    return path.stem if path.suffix == ".safetensors" else path.parent.name
