"""Building a registered method fresh or from a saved model, and the frozen teacher of a method
that needs one."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, config_from_dict
from ..errors import ConfigError
from ..io import read_saved_model
from ..method_specs import method_spec
from ..models.pretrained import load_strictly
from ..models.teacher import LangmimTeacher, Teacher, build_library_teacher, parse_teacher_source
from .base import PretrainMethod
from .registry import method_class


def build_method(cfg: Config, with_teacher: bool = False, teacher: Teacher | None = None) -> PretrainMethod:
    """The method named by ``cfg.method``. A method that ``needs_teacher`` gets its frozen tower
    (``teacher``, or one built from its section's ``teacher.source``) only ``with_teacher``
    (training); a loaded checkpoint encodes images without it. Training checks the method's rules
    first (``check_method_rules``); a saved model loads whatever it trained with."""
    cls = method_class(cfg.method)
    if not method_spec(cfg.method).needs_teacher:
        return cls(cfg)
    own, prefix = cfg.settings.teacher, f"{cfg.method}.teacher"
    if with_teacher and teacher is None:
        teacher = build_teacher(own.source, cfg.model.img_size // cfg.model.patch_size)
    if teacher is not None:
        if own.embed_dim not in (None, teacher.embed_dim):
            raise ConfigError(f"{prefix}.embed_dim={own.embed_dim} but the teacher '{own.source}' gives {teacher.embed_dim}")
        own.embed_dim = teacher.embed_dim
    if own.embed_dim is None:
        raise ConfigError(f"method={cfg.method} needs the teacher's feature width: set {prefix}.source (or {prefix}.embed_dim)")
    return cls(cfg, teacher)


def load_method(path: str | Path) -> PretrainMethod:
    """A saved model (checkpoint file, run directory or safetensors export) rebuilt from its
    saved config, in eval mode, with ``config``, ``checkpoint_path`` and ``step`` set."""
    saved = read_saved_model(path)
    cfg = config_from_dict(saved.config)
    model = build_method(cfg)
    load_strictly(model, saved.weights, str(saved.path), "model")
    model.checkpoint_path, model.step = str(saved.path), saved.step
    return model.eval()


def build_teacher(source: str | None, grid_size: int | None = None, random_weights: bool = False) -> Teacher:
    """The frozen tower a ``teacher.source`` names: ``openclip:MODEL:WEIGHTS``, ``timm:MODEL:WEIGHTS``
    (built for the student's ``grid_size``; without weights when ``random_weights``, for dry
    runs) or ``langmim:RUN_OR_CHECKPOINT`` (a model with a text tower saved by langmim)."""
    parsed = parse_teacher_source(source)
    if parsed.kind == "langmim":
        return LangmimTeacher(load_method(parsed.location), parsed.location)
    return build_library_teacher(parsed, grid_size, random_weights)
