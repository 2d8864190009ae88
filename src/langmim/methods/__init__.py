"""Registry of pre-training methods, picked by ``method=NAME``."""
from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from ..models.teacher import build_teacher
from .base import PretrainMethod
from .clip import CLIP
from .mae import MAE
from .milan import MILAN
from .rils import RILS

METHOD_REGISTRY: dict[str, type[PretrainMethod]] = {cls.name: cls for cls in (MAE, CLIP, RILS, MILAN)}


def build_method(cfg: Config, with_teacher: bool = False) -> PretrainMethod:
    """The method named by ``cfg.method``. MILAN loads its frozen teacher only ``with_teacher``
    (training); a loaded MILAN checkpoint encodes images without it."""
    if cfg.method != "milan":
        return METHOD_REGISTRY[cfg.method](cfg)
    teacher = build_teacher(cfg.teacher.source, cfg.model.img_size // cfg.model.patch_size) if with_teacher else None
    if teacher is not None:
        if cfg.teacher.embed_dim not in (None, teacher.embed_dim):
            raise ConfigError(f"teacher.embed_dim={cfg.teacher.embed_dim} but the teacher '{cfg.teacher.source}' gives {teacher.embed_dim}")
        cfg.teacher.embed_dim = teacher.embed_dim
    if cfg.teacher.embed_dim is None:
        raise ConfigError("method=milan needs the teacher's feature width: set teacher.source (or teacher.embed_dim)")
    return MILAN(cfg, teacher)
