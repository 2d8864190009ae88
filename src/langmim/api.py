"""Python API: ``langmim.load(path)`` -> a model with encode_image / encode_text, its tokenizer
and its preprocess transform, for any checkpoint the project writes."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import Config
from .methods import load_method
from .methods.base import PretrainMethod
from .models.text import build_tokenizer
from .transforms import build_preprocess


def attach_inference_api(model: PretrainMethod, cfg: Config) -> PretrainMethod:
    model.config = cfg
    model.tokenizer = build_tokenizer(cfg.model.context_length, cfg.init.text)
    model.preprocess = build_preprocess(cfg.model.img_size)
    return model


def load(path: str | Path, device: str | torch.device = "cpu") -> PretrainMethod:
    """Load a checkpoint file, the newest checkpoint of a run directory, or a safetensors export,
    in eval mode."""
    model = load_method(path)
    return attach_inference_api(model, model.config).to(device).eval()


def run_name(model: PretrainMethod) -> str:
    """The name results are filed under: the run directory's (or a safetensors export's) name."""
    path = Path(model.checkpoint_path)
    return path.stem if path.suffix == ".safetensors" else path.parent.name
