"""An external model's ``--checkpoint``, ``timm:MODEL:WEIGHTS`` or ``openclip:MODEL:WEIGHTS``, read
without torch: the command line checks it before anything heavy loads, and it names the folder
the model's results are filed under."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ConfigError

KINDS = ("timm", "openclip")
# The config file a library's local-dir folder holds (MODEL is local-dir, WEIGHTS the folder).
LOCAL_DIR_CONFIGS = {"timm": "config.json", "openclip": "open_clip_config.json"}


@dataclass(frozen=True)
class ExternalSpec:
    kind: str  # timm or openclip
    name: str  # the library's model name, or local-dir
    weights: str  # a weights file, a folder holding one, or the local-dir folder

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def library_name(self) -> str:
        """The name the library builds the model by: its own, or ``local-dir:FOLDER``."""
        return f"local-dir:{self.weights}" if self.name == "local-dir" else self.name

    def results_folder(self) -> str:
        """The model's own folder name under ``runs/external``: its source, the weights' file or
        folder name and 8 hex digits of the sha256 of the source with the weights' absolute path,
        so two exports (both ``timm:local-dir``) or two weights of one architecture never share it."""
        digest = hashlib.sha256(f"{self.source}:{Path(self.weights).resolve()}".encode()).hexdigest()[:8]
        return re.sub(r"[^\w.-]+", "-", f"{self.source}-{Path(self.weights).name}") + f"-{digest}"


def is_external(spec: str) -> bool:
    return spec.startswith(tuple(f"{kind}:" for kind in KINDS))


def parse_external(spec: str) -> ExternalSpec:
    """``timm:MODEL:WEIGHTS`` or ``openclip:MODEL:WEIGHTS`` whose weights are on disk (a local-dir
    folder with its library's config file), or a one-line error."""
    kind, _, rest = spec.partition(":")
    name, _, weights = rest.partition(":")
    if kind not in KINDS or not name or not weights:
        raise ConfigError(f"--checkpoint {spec!r}: expected a langmim run/checkpoint, timm:MODEL:WEIGHTS or openclip:MODEL:WEIGHTS")
    if not Path(weights).exists():
        raise CheckpointError(f"--checkpoint {spec}: '{weights}' does not exist")
    if name == "local-dir" and not (Path(weights) / LOCAL_DIR_CONFIGS[kind]).is_file():
        raise CheckpointError(f"--checkpoint {spec}: no {LOCAL_DIR_CONFIGS[kind]} in that folder")
    return ExternalSpec(kind, name, weights)
