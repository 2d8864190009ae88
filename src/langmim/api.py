"""Python API: ``langmim.load(path)`` -> a ``LoadedModel`` (encode_image / encode_text, its
tokenizer and its preprocess transform) for any checkpoint the project writes."""
from __future__ import annotations

from pathlib import Path

import torch

from .interface import LoadedModel
from .methods import load_method


def load(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint file, the newest checkpoint of a run directory, or a safetensors export,
    in eval mode."""
    return load_method(path).to(device).eval()


def run_name(model: LoadedModel) -> str:
    """The name results are filed under: the run directory's (or a safetensors export's) name."""
    path = Path(model.checkpoint_path)
    return path.stem if path.suffix == ".safetensors" else path.parent.name
