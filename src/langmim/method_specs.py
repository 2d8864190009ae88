"""The pre-training methods by name, each with its spec: where its class lives, what it needs, its
own config section (``NAME.*``) and its rules. Nothing here imports torch, so the command line
checks every method setting before the heavy libraries load.

A new method is a file in ``langmim/methods`` (a ``PretrainMethod`` subclass) plus one line in
``METHODS``, with its settings dataclass and rules beside that line.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError

# The rules read a resolved ``langmim.config.Config``; this module stays below the config package,
# which reads the sections declared here, so it names the type only in words.
Config = Any

IMPORTANCES = ("attention", "similarity")  # what MILAN's semantic-aware masking samples patches by
SUBCELLS = 4  # the supervised ceiling's targets: each patch token names the garment of SUBCELLS x SUBCELLS cells


def choices(default: str, options: tuple[str, ...]) -> str:
    """A string setting restricted to ``options`` (checked when the value is set)."""
    return field(default=default, metadata={"choices": options})


CONTRASTIVE_LOSSES = ("softmax", "sigmoid")  # CLIP's batch softmax (InfoNCE); SigLIP's pairwise sigmoid with a learnt bias


@dataclass
class ContrastiveSettings:
    """What every method with an image-text contrastive term sets: the loss. ``sigmoid`` starts its
    logit scale at log 10 and its learnt bias at ``sigmoid_bias_init``: -10 as the SigLIP paper
    trains from scratch, -2.71 in its released LiT recipe on COCO."""

    contrastive_loss: str = choices("softmax", CONTRASTIVE_LOSSES)
    sigmoid_bias_init: float = -10.0


@dataclass
class SigLIPSettings(ContrastiveSettings):
    """SigLIP: CLIP with the pairwise sigmoid loss."""

    contrastive_loss: str = choices("sigmoid", CONTRASTIVE_LOSSES)


@dataclass
class FLIPSettings(ContrastiveSettings):
    """FLIP: the share of each image's patches the encoder never sees in training, and how many
    final steps see them all (unmasked tuning)."""

    patch_dropout: float = 0.5
    unmasked_steps: int = 0


@dataclass
class SLIPSettings(ContrastiveSettings):
    """SLIP: L = L_clip + ssl_scale * L_simclr, SimCLR's NT-Xent at ssl_temperature on an MLP
    (hidden ssl_mlp_dim, output ssl_embed_dim; unset: from ``model.arch``) over two views."""

    ssl_scale: float = 1.0
    ssl_temperature: float = 0.1
    ssl_mlp_dim: Optional[int] = None
    ssl_embed_dim: Optional[int] = None


@dataclass
class MaskedSettings:
    """What every masked-image-modelling method sets: the share of patches hidden from the encoder."""

    mask_ratio: float = 0.75


@dataclass
class MAESettings(MaskedSettings):
    """MAE: pixel targets normalised per patch, and its decoder (unset sizes come from ``model.arch``)."""

    norm_pix_loss: bool = True
    decoder_width: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_heads: Optional[int] = None


@dataclass
class RILSSettings(MaskedSettings, ContrastiveSettings):
    """RILS: L = L_clip + rec_weight * L_rec, where L_rec is KL(target || prediction) over the batch's
    captions, the prediction (masked pass) at one temperature and the stop-gradient target of the
    same encoder (full pass) at a sharper one."""

    rec_weight: float = 0.5
    prediction_temperature: float = 0.1
    target_temperature: float = 0.04


@dataclass
class TeacherSettings:
    """A frozen network trained against: language-supervised in MILAN's paper; DINO or supervised for its ablation."""

    source: Optional[str] = None  # openclip:MODEL:WEIGHTS, timm:MODEL:WEIGHTS or langmim:RUN_OR_CHECKPOINT
    importance: str = choices("attention", IMPORTANCES)  # what semantic-aware masking samples by
    embed_dim: Optional[int] = None  # the teacher's feature width; filled when it is loaded


@dataclass
class MILANSettings(MaskedSettings):
    """MILAN: its frozen teacher, semantic-aware masking (``random``: the paper's ablation), its
    prompting decoder (``mae``: MAE's decoder, the paper's ablation; unset sizes from ``model.arch``)."""

    masking: str = choices("semantic", ("semantic", "random"))
    decoder_type: str = choices("prompting", ("prompting", "mae"))
    decoder_width: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_heads: Optional[int] = None
    teacher: TeacherSettings = field(default_factory=TeacherSettings)


def milan_rules(cfg: Config) -> None:
    if cfg.train.fsdp:
        raise ConfigError("train.fsdp is not supported for MILAN yet (its frozen teacher would be sharded too); use DDP")


def flip_rules(cfg: Config) -> None:
    own = cfg.settings
    if not 0.0 < own.patch_dropout < 1.0:
        raise ConfigError(f"flip.patch_dropout={own.patch_dropout}: the share of patches dropped must be in (0, 1); "
                          "for none, use method=clip")
    if not 0 <= own.unmasked_steps <= cfg.train.steps:
        raise ConfigError(f"flip.unmasked_steps={own.unmasked_steps} must be between 0 and train.steps={cfg.train.steps}")


def supervised_rules(cfg: Config) -> None:
    if cfg.data.name != "fashion-scenes":
        raise ConfigError(f"method supervised trains on fashion-scenes' ground truth; data.name={cfg.data.name} has none")
    if cfg.model.patch_size % SUBCELLS:
        raise ConfigError(f"method supervised labels {SUBCELLS} x {SUBCELLS} cells per patch: "
                          f"model.patch_size={cfg.model.patch_size} must be a multiple of {SUBCELLS}")


@dataclass(frozen=True)
class MethodSpec:
    """One method: its class (``"module:Class"``, which may point into your own package), what the
    engine, evaluation and export must provide it, its settings section and its rules."""

    target: str
    settings: Optional[type] = None  # a dataclass: the method's own config section, NAME.*
    has_text: bool = False  # a text tower: zero-shot and retrieval, init.text, init.lock_text
    needs_teacher: bool = False  # trains against a frozen tower (its section's ``teacher``)
    can_lock_vision: bool = False  # init.lock_vision leaves it something to train (LiT)
    batch_coupled: bool = False  # one sample's loss depends on the others (contrastive)
    needs_scene_labels: bool = False  # trains on fashion-scenes' ground truth, not on captions
    needs_views: bool = False  # two augmented views of each image beside it (``data/views.py``)
    rules: Optional[Callable[[Config], None]] = None  # refuses what it cannot honour, naming the key


METHODS: dict[str, MethodSpec] = {
    "mae": MethodSpec("langmim.methods.mae:MAE", MAESettings),
    "clip": MethodSpec("langmim.methods.clip:CLIP", ContrastiveSettings, has_text=True, can_lock_vision=True, batch_coupled=True),
    "siglip": MethodSpec("langmim.methods.siglip:SigLIP", SigLIPSettings, has_text=True, can_lock_vision=True, batch_coupled=True),
    "flip": MethodSpec("langmim.methods.flip:FLIP", FLIPSettings, has_text=True, can_lock_vision=True, batch_coupled=True,
                       rules=flip_rules),
    "slip": MethodSpec("langmim.methods.slip:SLIP", SLIPSettings, has_text=True, batch_coupled=True, needs_views=True),
    "rils": MethodSpec("langmim.methods.rils:RILS", RILSSettings, has_text=True, batch_coupled=True),
    "milan": MethodSpec("langmim.methods.milan:MILAN", MILANSettings, needs_teacher=True, rules=milan_rules),
    "supervised": MethodSpec("langmim.methods.supervised:Supervised", needs_scene_labels=True, rules=supervised_rules),
}


def methods_with(flag: str) -> str:
    """The registered methods whose spec sets ``flag`` (e.g. ``has_text``), for messages."""
    return ", ".join(name for name, spec in METHODS.items() if getattr(spec, flag))


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"config key 'method' must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]


def check_method_rules(cfg: Config) -> None:
    """Refuse, before torch is imported, settings the configured method cannot train with: the
    rules every method shares, then its own."""
    spec = method_spec(cfg.method)
    if (cfg.init.text or cfg.init.lock_text) and not spec.has_text:
        raise ConfigError(f"init.text and init.lock_text need a text tower; method {cfg.method} has none")
    if cfg.init.lock_vision and not spec.can_lock_vision:
        raise ConfigError(f"init.lock_vision freezes the encoder that method {cfg.method} trains; "
                          f"LiT locks it for a method that trains a text tower against it ({methods_with('can_lock_vision')})")
    if spec.rules is not None:
        spec.rules(cfg)
