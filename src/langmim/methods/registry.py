"""The pre-training methods by name: one line each, the class imported on first use, so the
command line can check ``method=NAME`` before torch is imported. A new method is a file in this
package (a ``PretrainMethod`` subclass declaring its capabilities) plus one line here."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import PretrainMethod

# name -> "module:Class" (an entry-point reference; a method of your own may live in your package)
METHODS: dict[str, str] = {
    "mae": "langmim.methods.mae:MAE",
    "clip": "langmim.methods.clip:CLIP",
    "rils": "langmim.methods.rils:RILS",
    "milan": "langmim.methods.milan:MILAN",
    "supervised": "langmim.methods.supervised:Supervised",
}


def check_method_name(name: str) -> None:
    if name not in METHODS:
        raise ConfigError(f"config key 'method' must be one of {', '.join(METHODS)}; got {name!r}")


def method_class(name: str) -> type[PretrainMethod]:
    """The class registered as ``name``."""
    check_method_name(name)
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
