"""langmim: pre-train vision transformers by masked image modelling in a language semantic space."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def __getattr__(name: str) -> Any:
    """``langmim.load`` imports torch and the models on first use, so ``langmim --help`` and
    config errors start without them."""
    if name == "load":
        from .api import load

        return load
    raise AttributeError(f"module 'langmim' has no attribute {name!r}")
