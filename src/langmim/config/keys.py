"""Setting one dotted key: finding its section (a shared one, or the method's own ``NAME.*``),
coercing the value to the field's type, choices and range, and reading the names older runs saved.

Every mistake raises ``ConfigError`` naming the key and what was expected; a key of another
method's section names that method and this run's own settings.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any

import yaml

from ..errors import ConfigError, shown
from ..method_specs import METHODS, method_spec
from .schema import CHOICES, RANGES, Config

# Keys renamed since runs were saved: an old name reads as the new one ({method}: the run's method).
RENAMED_KEYS = {
    "eval.segmentation_train_size": "eval.scene_train_size",
    "eval.segmentation_test_size": "eval.scene_test_size",
    "loss.mask_ratio": "{method}.mask_ratio",
    "loss.norm_pix_loss": "mae.norm_pix_loss",
    "loss.rec_weight": "rils.rec_weight",
    "loss.student_temperature": "rils.prediction_temperature",
    "loss.teacher_temperature": "rils.target_temperature",
    "loss.masking": "milan.masking",
    "model.decoder_type": "milan.decoder_type",
    "model.decoder_width": "{method}.decoder_width",
    "model.decoder_depth": "{method}.decoder_depth",
    "model.decoder_heads": "{method}.decoder_heads",
    "teacher.source": "{method}.teacher.source",
    "teacher.importance": "{method}.teacher.importance",
    "teacher.embed_dim": "{method}.teacher.embed_dim",
}

# Keys added since runs were saved, with the value that reproduces what those runs did.
LEGACY_VALUES = {"train.no_weight_decay": ["cls_token", "mask_token", "positional_embedding"]}

SHARED_SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "settings")


def coerce(key: str, value: Any, hint: Any, choices: tuple[str, ...] | None = None) -> Any:
    """Convert a YAML-parsed value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return coerce(key, value, args[0], choices)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {shown(value)}")
        return [coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true or false, got {shown(value)}")
    if hint in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = hint(value)
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {shown(value)}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {shown(value)}")
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {shown(value)}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def section_keys(section: Any, prefix: str) -> list[str]:
    """Every settable key below a section, e.g. ``milan.teacher.source``."""
    keys = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        keys += section_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
    return keys


def own_settings(cfg: Config) -> str:
    """This run's method and its own settings, for messages."""
    if cfg.settings is None:
        return f"method {cfg.method} has no settings of its own"
    return f"method {cfg.method}'s own settings are {', '.join(section_keys(cfg.settings, cfg.method + '.'))}"


def _method_section(cfg: Config, name: str, key: str) -> Any:
    if name != cfg.method:
        raise ConfigError(f"config key '{key}' is a setting of method {name}, not of this run's method; {own_settings(cfg)}")
    if cfg.settings is None:
        raise ConfigError(f"unknown config key '{key}': {own_settings(cfg)}")
    return cfg.settings


def _section_and_field(cfg: Config, key: str) -> tuple[Any, dataclasses.Field]:
    parts = key.split(".")
    node: Any = cfg
    start = 0
    if parts[0] in METHODS and len(parts) > 1:
        node, start = _method_section(cfg, parts[0], key), 1
    for depth in range(start, len(parts)):
        part = parts[depth]
        fields = {f.name: f for f in dataclasses.fields(node) if node is not cfg or f.name != "settings"}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            valid = sorted(fields) + ([cfg.method] if node is cfg and cfg.settings is not None else [])
            raise ConfigError(f"unknown config key '{key}'; valid keys at {where}: {', '.join(valid)}")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"config key '{key}' is a section; set one of its keys, e.g. {key}.{dataclasses.fields(getattr(node, part))[0].name}=...")
            return node, fields[part]
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:depth + 1])}' is not a section")
    raise ConfigError(f"empty config key in {key!r}")


def set_method(cfg: Config, name: Any) -> None:
    """Choose the method; a different one gets its own section with its defaults."""
    name = coerce("method", name, str)
    spec = method_spec(name)
    if name != cfg.method or (spec.settings is not None and not isinstance(cfg.settings, spec.settings)):
        cfg.method, cfg.settings = name, spec.settings() if spec.settings is not None else None


def set_value(cfg: Config, key: str, value: Any) -> None:
    if key == "method":
        return set_method(cfg, value)
    section, fld = _section_and_field(cfg, key)
    hints = typing.get_type_hints(type(section))
    choices = fld.metadata.get("choices") or CHOICES.get(key)
    value = coerce(key, value, hints[fld.name], choices)
    if key in RANGES and value is not None:
        check_range(key, value)
    setattr(section, fld.name, value)


def check_range(key: str, value: float | list[float]) -> None:
    """Refuse a number (or any item of a list) outside the key's range in ``RANGES``; nan is
    outside every range."""
    low, high, ends = RANGES[key]
    for number in value if isinstance(value, list) else [value]:
        above = low < number or (ends[0] == "[" and number == low)
        below = number < high or (ends[1] == "]" and number == high)
        if not (above and below):
            raise ConfigError(f"config key '{key}' must be in {ends[0]}{low:g}, {high:g}{ends[1]}; got {number}")


def renamed(key: str, method: str) -> str:
    """The current name of a key older runs saved (the key itself if it is current)."""
    return RENAMED_KEYS.get(key, key).format(method=method)


def applies(cfg: Config, key: str) -> bool:
    """Whether ``key`` names a setting this run has."""
    try:
        _section_and_field(cfg, key)
    except ConfigError:
        return False
    return True


def set_saved_value(cfg: Config, key: str, value: Any, strict: bool) -> None:
    """Set a key that may carry an older name. Old configs saved every method's keys, so an old key
    this run's method has no use for is passed over in a file (``strict=False``: presets, YAML
    files, saved runs), and refused on the command line with where the setting lives now."""
    new = renamed(key, cfg.method)
    if new == key or applies(cfg, new):
        return set_value(cfg, new, value)
    if strict:
        tail = new.split(".", 1)[1]
        owners = [n for n, s in METHODS.items() if s.settings is not None and applies_to(n, tail)]
        raise ConfigError(f"config key '{key}' is now a method's own setting ({' or '.join(f'{n}.{tail}' for n in owners)}); "
                          f"{own_settings(cfg)}")


def applies_to(method: str, tail: str) -> bool:
    probe = Config()
    set_method(probe, method)
    return applies(probe, f"{method}.{tail}")


def flat_items(data: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of a nested mapping, one at a time: a mapping that YAML aliases make
    huge is refused at its first wrong key, never expanded whole."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flat_items(value, name + ".")
        else:
            yield name, value


def flatten(data: dict) -> dict[str, Any]:
    """A nested mapping as {dotted key: value}."""
    return dict(flat_items(data))


def apply_dict(cfg: Config, data: dict, source: str, strict: bool = False) -> None:
    """Set every key of a (nested) mapping read from ``source``; errors name the source."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    for key, value in flat_items(data):
        try:
            set_saved_value(cfg, key, value, strict)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except (yaml.YAMLError, RecursionError):  # read as the text it is
        value = raw
    return key.strip(), value
