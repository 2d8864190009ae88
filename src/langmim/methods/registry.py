"""A registered method's class, imported on first use: the names, what each method needs and its
settings are in ``langmim.method_specs``, which the command line reads before torch is imported."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..method_specs import method_spec

if TYPE_CHECKING:
    from .base import PretrainMethod


def method_class(name: str) -> type[PretrainMethod]:
    """The class registered as ``name``."""
    module, _, cls = method_spec(name).target.partition(":")
    return getattr(importlib.import_module(module), cls)
