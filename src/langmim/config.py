"""Typed configuration: dataclasses, YAML presets shipped in the package, ``key=value`` overrides.

Every value is checked against its field's type and choices; mistakes raise ``ConfigError``
with the key and what was expected. ``resolve`` fills the architecture's sizes, so the
``config.yaml`` written beside each run is complete.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError

DECODER_TYPES = ("prompting", "mae")
MASKINGS = ("semantic", "random")
IMPORTANCES = ("attention", "similarity")
DATASETS = ("fashion-scenes", "csv", "imagefolder", "webdataset")
PRECISIONS = ("fp32", "bf16", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")
INTERPOLATIONS = ("bicubic", "bilinear")
REPORT_SINKS = ("tensorboard", "wandb")

# Each entry fills every ``model.*`` config key that the user leaves unset.
ARCHS: dict[str, dict] = {
    # CPU-sized: 64 px scenes, 16 px patches (16 tokens: 2.5x the images/s of 8 px patches,
    # which decided the demo's accuracy on 2 cores); text context cut to 32 tokens since the
    # generated captions are short and the text tower would otherwise dominate.
    "demo": dict(
        img_size=64, patch_size=16, width=128, depth=6, heads=4, mlp_ratio=4.0, embed_dim=128,
        text_width=128, text_depth=3, text_heads=4, context_length=32,
        decoder_width=128, decoder_depth=2, decoder_heads=4,
    ),
    "vit_s16": dict(
        img_size=224, patch_size=16, width=384, depth=12, heads=6, mlp_ratio=4.0, embed_dim=384,
        text_width=512, text_depth=12, text_heads=8, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
    ),
    "vit_b16": dict(
        img_size=224, patch_size=16, width=768, depth=12, heads=12, mlp_ratio=4.0, embed_dim=512,
        text_width=512, text_depth=12, text_heads=8, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
    ),
    "vit_l16": dict(  # the releases' ViT-L settings: MAE's decoder, CLIP ViT-L/14's text tower and joint width
        img_size=224, patch_size=16, width=1024, depth=24, heads=16, mlp_ratio=4.0, embed_dim=768,
        text_width=768, text_depth=12, text_heads=12, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
    ),
}


@dataclass
class ModelConfig:
    """Encoder, text tower and decoder sizes; unset ones come from ``arch``."""

    arch: str = "demo"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    embed_dim: Optional[int] = None
    text_width: Optional[int] = None
    text_depth: Optional[int] = None
    text_heads: Optional[int] = None
    context_length: Optional[int] = None
    decoder_width: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_heads: Optional[int] = None
    text_quick_gelu: bool = False  # CLIP text tower with QuickGELU: OpenAI's weights and open_clip's -quickgelu ones need it
    decoder_type: str = "prompting"  # milan: its prompting decoder, or MAE's (the paper's ablation)


@dataclass
class LossConfig:
    """Objective hyper-parameters (docs/methods.md, "Hyper-parameters"); the defaults are the papers'."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    rec_weight: float = 0.5
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    masking: str = "semantic"  # milan: semantic-aware, or random (the paper's ablation)


@dataclass
class TeacherConfig:
    """MILAN's frozen teacher: language-supervised in the paper; DINO or supervised for its ablation."""

    source: Optional[str] = None  # openclip:MODEL:WEIGHTS, timm:MODEL:WEIGHTS or langmim:RUN_OR_CHECKPOINT
    importance: str = "attention"  # what semantic-aware masking samples by: attention | similarity
    embed_dim: Optional[int] = None  # the teacher's feature width; filled when it is loaded


@dataclass
class InitConfig:
    """Pre-trained weights a fresh run starts from, and which towers stay frozen."""

    vision: Optional[str] = None  # a timm ViT weights file or folder (.safetensors, .pth, .bin; local-dir)
    text: Optional[str] = None  # openclip:WEIGHTS (same text tower shape) or sentence-transformers:FOLDER (replaces it)
    lock_vision: bool = False  # clip: keep the vision tower frozen (LiT); its projection still trains
    lock_text: bool = False  # keep the text tower frozen; its projection still trains


@dataclass
class DataConfig:
    name: str = "fashion-scenes"
    root: Optional[str] = None  # fashion-scenes: the Fashion-MNIST idx files; csv: the table; imagefolder: the folder;
    # webdataset: a brace-expanded shard list, e.g. /data/laion/{00000..01023}.tar
    resampled: bool = False  # webdataset: draw shards with replacement (open_clip's --dataset-resampled)
    augment: bool = True
    # csv, imagefolder, webdataset: RandomResizedCrop's area share, resampling, and a horizontal flip
    # (fashion-scenes draws its own layouts; with augment it flips them, swapping left/right in the caption)
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    interpolation: str = "bicubic"
    hflip: bool = False
    max_image_pixels: int = 89_478_485  # csv, imagefolder, webdataset: larger images are skipped as decompression bombs
    plain_share: float = 0.3  # fashion-scenes: share of single white/grey centred items
    num_scenes: Optional[int] = None  # fashion-scenes: a fixed set of N scenes visited in seeded epochs; unset: a fresh scene per sample
    num_workers: int = 0


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128  # global batch, split over ranks
    accum_freq: int = 1
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping (timm's, open_clip's and MAE's default)
    # exempt from weight decay besides 1-D parameters (biases, norms, the logit scale): names or
    # name suffixes, e.g. [cls_token, mask_token]; [] decays the rest, as MAE, SLIP and open_clip do
    no_weight_decay: list[str] = field(default_factory=list)
    precision: str = "fp32"  # auto: bf16 autocast where the device has native bf16 (CUDA, AVX512-BF16/AMX CPUs)
    grad_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, more compute
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    compile: bool = False  # torch.compile the vision and text towers (in place: checkpoints keep their keys)
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # scalars beside metrics.jsonl: tensorboard, wandb
    ckpt_every: int = 100
    keep_checkpoints: int = 2


@dataclass
class EvalConfig:
    probe_train_size: int = 20000  # Fashion-MNIST train images the probes fit on
    test_size: int = 10000
    batch_size: int = 256
    seed: int = 0  # fixes the probe subset and the validation split
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    fewshot_shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    fewshot_seeds: int = 5
    retrieval_size: int = 1000  # held-out captioned scenes
    scene_train_size: int = 2000  # scenes of train-split items the scene probes, detection and segmentation heads fit on
    scene_test_size: int = 1000  # scenes of test-split items they (and compositional) are scored on
    dense_refine: int = 2  # detection, segmentation: patch tokens on a grid refine x finer (refine**2 shifted passes)
    lowshot_shots: list[int] = field(default_factory=lambda: [1, 4, 16])  # scene probes: labelled examples per class
    segmentation_epochs: int = 20
    detection_epochs: int = 30
    shift_test_size: int = 2000  # test items rendered in each shifted style
    finetune_train_size: int = 20000  # Fashion-MNIST train images fine-tuning trains on (as the probes)
    finetune_epochs: int = 2
    finetune_min_steps: int = 300  # a smaller train set gets more epochs (the built-in 20,000 images: 2 epochs, 312 steps)
    finetune_lr: float = 3e-3
    finetune_layer_decay: float = 0.75  # MAE uses 0.65 for ViT-B's 12 blocks; the demo has 6
    finetune_drop_path: float = 0.1
    max_image_pixels: int = 89_478_485  # image folders, caption tables, CLIP_benchmark sets: larger images are skipped as decompression bombs


@dataclass
class Config:
    method: str = "rils"
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": tuple(ARCHS),
    "data.name": DATASETS,
    "train.precision": PRECISIONS,
    "train.device": DEVICES,
    "model.decoder_type": DECODER_TYPES,
    "loss.masking": MASKINGS,
    "teacher.importance": IMPORTANCES,
    "data.interpolation": INTERPOLATIONS,
}

# Keys a resumed run may change without invalidating its checkpoint.
RESUMABLE_CHANGES = (
    "output_dir", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
    "train.device", "train.report_to", "data.num_workers", "data.root", "eval.",
)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML-parsed value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return _coerce(key, value, args[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if hint in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = hint(value)
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        value = str(value)
        choices = CHOICES.get(key)
        if choices and value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def _section_and_field(cfg: Config, key: str) -> tuple[Any, dataclasses.Field]:
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key}'; valid keys at {where}: {valid}")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"config key '{key}' is a section; set one of its keys, e.g. {key}.{dataclasses.fields(getattr(node, part))[0].name}=...")
            return node, fields[part]
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:depth + 1])}' is not a section")
    raise ConfigError(f"empty config key in {key!r}")


def set_value(cfg: Config, key: str, value: Any) -> None:
    section, fld = _section_and_field(cfg, key)
    hints = typing.get_type_hints(type(section))
    setattr(section, fld.name, _coerce(key, value, hints[fld.name]))


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def apply_dict(cfg: Config, data: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    for key, value in _flatten(data).items():
        try:
            set_value(cfg, key, value)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("langmim.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(preset: str) -> tuple[dict, str]:
    packaged = resources.files("langmim.configs") / f"{preset}.yaml"
    path = Path(preset)
    if packaged.is_file():
        text, source = packaged.read_text(), f"preset '{preset}'"
    elif path.is_file():
        text, source = path.read_text(), str(path)
    else:
        raise ConfigError(f"config '{preset}' is neither a preset ({', '.join(preset_names())}) nor a YAML file")
    try:
        return yaml.safe_load(text) or {}, source
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def resolve(cfg: Config) -> Config:
    """Fill unset model sizes from the named architecture and check cross-field rules."""
    for key, value in ARCHS[cfg.model.arch].items():
        if getattr(cfg.model, key) is None:
            setattr(cfg.model, key, value)
    m = cfg.model
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size} must be a multiple of model.patch_size={m.patch_size}")
    if m.width % m.heads or m.text_width % m.text_heads or m.decoder_width % m.decoder_heads:
        raise ConfigError("model widths must be divisible by their head counts (width/heads, text_width/text_heads, decoder_width/decoder_heads)")
    if not 0.0 <= cfg.data.plain_share <= 1.0:
        raise ConfigError(f"data.plain_share must be in [0, 1], got {cfg.data.plain_share}")
    low, high = cfg.data.crop_scale if len(cfg.data.crop_scale) == 2 else (0.0, -1.0)
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"data.crop_scale expects two area shares 0 < low <= high <= 1, got {cfg.data.crop_scale}")
    if cfg.data.num_scenes is not None and cfg.data.num_scenes < 1:
        raise ConfigError(f"data.num_scenes={cfg.data.num_scenes}: a fixed set needs at least 1 scene; leave it unset for the unlimited stream")
    if cfg.data.num_scenes is not None and cfg.data.name != "fashion-scenes":
        raise ConfigError(f"data.num_scenes fixes a set of fashion-scenes; data.name={cfg.data.name} brings its own samples")
    if cfg.data.hflip and cfg.data.name == "fashion-scenes":
        raise ConfigError("data.hflip flips real images (csv, imagefolder, webdataset); fashion-scenes flips its scenes "
                          "itself under data.augment, swapping left and right in the caption: set data.hflip=false")
    if not 0.0 <= cfg.loss.mask_ratio < 1.0:
        raise ConfigError(f"loss.mask_ratio must be in [0, 1), got {cfg.loss.mask_ratio}")
    if cfg.train.fsdp and (cfg.init.lock_vision or cfg.init.lock_text or str(cfg.init.text).startswith("sentence-transformers:")):
        raise ConfigError("train.fsdp is not supported with locked towers or a sentence-transformers text tower yet; use DDP")
    if str(cfg.init.text).startswith("sentence-transformers:"):
        kind, _, folder = cfg.init.text.partition(":")
        cfg.init.text = f"{kind}:{Path(folder).resolve()}"  # runs and exports refer to it from anywhere
    t = cfg.train
    for key in ("steps", "batch_size", "accum_freq", "log_every", "ckpt_every", "keep_checkpoints"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    if t.batch_size % t.accum_freq:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.accum_freq={t.accum_freq}")
    unknown = [sink for sink in t.report_to if sink not in REPORT_SINKS]
    if unknown:
        raise ConfigError(f"train.report_to: unknown {', '.join(unknown)}; choose from {', '.join(REPORT_SINKS)}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas expects two numbers, got {t.betas}")
    return cfg


def load_config(preset: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- preset or YAML file <- ``key=value`` overrides, then resolved."""
    cfg = Config()
    if preset:
        data, source = _read_yaml(preset)
        apply_dict(cfg, data, source)
    for item in overrides:
        key, value = parse_override(item)
        set_value(cfg, key, value)
    return resolve(cfg)


# Keys renamed since runs were saved: a saved config's old name loads as the new one.
RENAMED_KEYS = {"eval.segmentation_train_size": "eval.scene_train_size", "eval.segmentation_test_size": "eval.scene_test_size"}


# Keys added since runs were saved, with the value that reproduces what those runs did.
LEGACY_VALUES = {"train.no_weight_decay": ["cls_token", "mask_token", "positional_embedding"]}


def config_from_dict(data: dict) -> Config:
    """Rebuild a config saved in a checkpoint or ``config.yaml``."""
    cfg = Config()
    flat = {RENAMED_KEYS.get(k, k): v for k, v in _flatten(data).items()}
    apply_dict(cfg, {**LEGACY_VALUES, **flat}, "saved config")
    return resolve(cfg)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ, other than those a resumed run may change."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(
        k for k in set(a) | set(b)
        if a.get(k) != b.get(k) and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)
    )


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
