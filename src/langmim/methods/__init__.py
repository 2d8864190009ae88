"""Registry of pre-training methods, picked by ``method=NAME``."""
from __future__ import annotations

from ..config import Config
from .base import PretrainMethod
from .clip import CLIP
from .mae import MAE
from .rils import RILS

METHOD_REGISTRY: dict[str, type[PretrainMethod]] = {cls.name: cls for cls in (MAE, CLIP, RILS)}


def build_method(cfg: Config) -> PretrainMethod:
    return METHOD_REGISTRY[cfg.method](cfg)
