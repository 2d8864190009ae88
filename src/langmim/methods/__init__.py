"""Pre-training methods: one file each (a ``PretrainMethod`` subclass), registered by name with
its spec in ``langmim.method_specs``. ``build_method``, ``load_method`` and ``build_teacher`` live
in ``build`` and import torch on first use."""
from __future__ import annotations

from typing import Any

__all__ = ["build_method", "build_teacher", "load_method"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
