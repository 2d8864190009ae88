"""User-facing errors: the CLI prints their message as one line and exits with code 2."""
from __future__ import annotations

import reprlib
from typing import Any

SHOWN_CHARS = 200  # the most of a value an error message quotes

# reprlib stops at a few items and levels, so a value that YAML aliases make huge ("billion laughs") is never expanded.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, SHOWN_CHARS, SHOWN_CHARS


def shown(value: Any) -> str:
    """``repr(value)`` as an error message quotes it, at most about 200 characters: a long string
    cut with its length, any other value abridged by ``reprlib`` (its full repr is never built)."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} chars)"
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


class LangmimError(Exception):
    """A mistake in the user's input (config, data path, checkpoint) with a clear message."""


class ConfigError(LangmimError):
    """An unknown config key or a value of the wrong type or outside the valid choices."""


class DataError(LangmimError):
    """A data set that is missing, empty or unreadable."""


class CheckpointError(LangmimError):
    """A checkpoint that is missing, truncated, foreign or incompatible with the config."""


class CodeInFileError(CheckpointError):
    """A weights or cache file whose unpickling would run code: refused, never loaded another way."""
