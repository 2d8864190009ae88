"""Pre-training methods: one file each (a ``PretrainMethod`` subclass declaring its capabilities),
registered by name in ``registry``. ``build_method``, ``load_method``, ``build_teacher`` and
``check_training_config`` live in ``build`` and import torch on first use, so the command line reads the registry without it."""
from __future__ import annotations

from typing import Any

__all__ = ["build_method", "build_teacher", "check_training_config", "load_method"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
