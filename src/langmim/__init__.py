"""langmim: pre-train vision transformers by masked image modelling in a language semantic space."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import load  # noqa: E402

__all__ = ["load", "__version__"]
