"""Typed configuration: dataclasses, YAML presets shipped in the package, ``key=value`` overrides.

The shared sections (``model``, ``init``, ``data``, ``train``, ``eval``) are in ``schema``; each
method's own section (``rils.*``, ``milan.*``, ``mae.*``...) and its rules come from its spec in
``langmim.method_specs``. Every value is checked against its field's type, choices and range; mistakes
raise ``ConfigError`` with the key and what was expected. ``resolve`` fills the architecture's
sizes, so the ``config.yaml`` written beside each run is complete.
"""
from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..method_specs import method_spec
from .keys import LEGACY_VALUES, apply_dict, flatten, parse_override, set_method, set_saved_value
from .schema import ARCHS, REPORT_SINKS, RESUMABLE_CHANGES, Config, DataConfig, EvalConfig, FinetuneConfig, ModelConfig, TrainConfig

__all__ = [
    "ARCHS", "Config", "DataConfig", "EvalConfig", "FinetuneConfig", "ModelConfig", "TrainConfig", "apply_dict", "config_differences",
    "config_from_dict", "load_config", "parse_override", "preset_names", "resolve", "save_config", "to_dict",
]


def preset_folder(folder: str = "") -> Any:
    """The packaged presets: pre-training's in ``langmim/configs``, fine-tuning's in ``configs/finetune``."""
    base = resources.files("langmim.configs")
    return base / folder if folder else base


def preset_names(folder: str = "") -> list[str]:
    return sorted(p.name[:-5] for p in preset_folder(folder).iterdir() if p.name.endswith(".yaml"))


def read_yaml(preset: str, folder: str = "") -> tuple[dict, str]:
    """A packaged preset's (of ``folder``) or a YAML file's mapping, and how to name it in messages."""
    packaged = preset_folder(folder) / f"{preset}.yaml"
    path = Path(preset)
    if packaged.is_file():
        text, source = packaged.read_text(), f"preset '{preset}'"
    elif path.is_file():
        text, source = path.read_text(), str(path)
    else:
        raise ConfigError(f"config '{preset}' is neither a preset ({', '.join(preset_names(folder))}) nor a YAML file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read (deeper than Python's recursion limit allows)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    return data, source


def fill_from_arch(section: Any, arch: dict[str, Any]) -> None:
    """Set the section's unset fields that the architecture names."""
    for f in dataclasses.fields(section):
        if getattr(section, f.name) is None and f.name in arch:
            setattr(section, f.name, arch[f.name])


def resolve(cfg: Config) -> Config:
    """Fill unset sizes from the named architecture and check cross-field rules."""
    fill_from_arch(cfg.model, ARCHS[cfg.model.arch])
    own = cfg.settings
    if own is not None:
        fill_from_arch(own, ARCHS[cfg.model.arch])
    m = cfg.model
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size} must be a multiple of model.patch_size={m.patch_size}")
    if m.width % m.heads or m.text_width % m.text_heads:
        raise ConfigError("model widths must be divisible by their head counts (width/heads, text_width/text_heads)")
    if hasattr(own, "decoder_width") and own.decoder_width % own.decoder_heads:
        raise ConfigError(f"{cfg.method}.decoder_width={own.decoder_width} must be divisible by {cfg.method}.decoder_heads={own.decoder_heads}")
    if hasattr(own, "mask_ratio") and not 0.0 <= own.mask_ratio < 1.0:
        raise ConfigError(f"{cfg.method}.mask_ratio must be in [0, 1), got {own.mask_ratio}")
    cfg.data.web.validate()
    if cfg.data.world == "web" and cfg.data.name != "fashion-scenes":
        raise ConfigError(f"data.world=web is a world of the built-in fashion-scenes; data.name={cfg.data.name} brings its own samples")
    if cfg.data.world == "web" and method_spec(cfg.method).needs_scene_labels:
        raise ConfigError(f"method={cfg.method} trains on the clean world's scene targets (1 to 3 items on a 3x3 grid); "
                          "its web-world targets are not built yet: use data.world=clean")
    if not 0.0 <= cfg.data.plain_share <= 1.0:
        raise ConfigError(f"data.plain_share must be in [0, 1], got {cfg.data.plain_share}")
    low, high = cfg.data.crop_scale if len(cfg.data.crop_scale) == 2 else (0.0, -1.0)
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"data.crop_scale expects two area shares 0 < low <= high <= 1, got {cfg.data.crop_scale}")
    if cfg.data.shuffle_buffer < 0:
        raise ConfigError(f"data.shuffle_buffer={cfg.data.shuffle_buffer}: a buffer of samples to shuffle must be 0 (none) or more")
    if cfg.data.num_scenes is not None and cfg.data.num_scenes < 1:
        raise ConfigError(f"data.num_scenes={cfg.data.num_scenes}: a fixed set needs at least 1 scene; leave it unset for the unlimited stream")
    if cfg.data.num_scenes is not None and cfg.data.name != "fashion-scenes":
        raise ConfigError(f"data.num_scenes fixes a set of fashion-scenes; data.name={cfg.data.name} brings its own samples")
    if cfg.data.hflip and cfg.data.name == "fashion-scenes":
        raise ConfigError("data.hflip flips real images (csv, imagefolder, webdataset); fashion-scenes flips its scenes "
                          "itself under data.augment, swapping left and right in the caption: set data.hflip=false")
    if cfg.train.fsdp and (cfg.init.lock_vision or cfg.init.lock_text or str(cfg.init.text).startswith("sentence-transformers:")):
        raise ConfigError("train.fsdp is not supported with locked towers or a sentence-transformers text tower yet; use DDP")
    if str(cfg.init.text).startswith("sentence-transformers:"):
        kind, _, folder = cfg.init.text.partition(":")
        cfg.init.text = f"{kind}:{Path(folder).resolve()}"  # runs and exports refer to it from anywhere
    t = cfg.train
    if t.batch_size % t.accum_freq:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.accum_freq={t.accum_freq}")
    unknown = [sink for sink in t.report_to if sink not in REPORT_SINKS]
    if unknown:
        raise ConfigError(f"train.report_to: unknown {', '.join(unknown)}; choose from {', '.join(REPORT_SINKS)}")
    if t.checkpoint_format not in ("file", "sharded"):
        raise ConfigError(f"train.checkpoint_format must be file or sharded, got {t.checkpoint_format!r}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas expects two numbers, got {t.betas}")
    f = cfg.finetune
    if f.batch_size % f.accum_iter:
        raise ConfigError(f"finetune.batch_size={f.batch_size} must be divisible by finetune.accum_iter={f.accum_iter}")
    return cfg


def load_config(preset: str | None = None, overrides: typing.Sequence[str] = (), folder: str = "") -> Config:
    """Defaults <- preset (of ``folder``: "finetune" for ``langmim finetune``'s) or YAML file <-
    ``key=value`` overrides, then resolved. The method is settled first (the last ``method=``
    override, else the file's), so that its own section's keys are read as such wherever they stand."""
    data, source = read_yaml(preset, folder) if preset else ({}, "")
    pairs = [parse_override(item) for item in overrides]
    chosen = [value for key, value in pairs if key == "method"]
    cfg = Config()
    set_method(cfg, chosen[-1] if chosen else data.get("method", cfg.method))
    apply_dict(cfg, {k: v for k, v in data.items() if k != "method"}, source)
    for key, value in pairs:
        if key != "method":
            set_saved_value(cfg, key, value, strict=True)
    return resolve(cfg)


def config_from_dict(data: dict) -> Config:
    """Rebuild a config saved in a checkpoint or ``config.yaml``, older key names included."""
    cfg = Config()
    set_method(cfg, data.get("method", cfg.method))
    apply_dict(cfg, {**LEGACY_VALUES, **flatten(data)}, "saved config")
    return resolve(cfg)


def to_dict(cfg: Config) -> dict:
    """The config as saved: the method's own section under its name, after ``output_dir``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name == "settings":
            continue
        value = getattr(cfg, f.name)
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        if f.name == "output_dir" and cfg.settings is not None:
            out[cfg.method] = dataclasses.asdict(cfg.settings)
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ, other than those a resumed run may change."""
    a, b = flatten(saved), flatten(current)
    return sorted(
        k for k in set(a) | set(b)
        if a.get(k) != b.get(k) and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)
    )


def save_config(cfg: Config, path: Path) -> None:
    """The merged config as YAML, written without following a link at ``path``."""
    from ..files import write_atomic

    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
