"""open_clip models built with the activation their weights were trained with.

OpenAI's CLIP weights were trained with QuickGELU (``x * sigmoid(1.702 x)``). Built with
open_clip's default GELU they load without a complaint and give wrong features, silently. What
the weights need is read from, in order:
- OpenAI's own layout: a state dict taken from OpenAI's release keeps its ``input_resolution``,
  ``context_length`` and ``vocab_size`` entries, which open_clip's models do not have;
- an ``open_clip_config.json`` beside the weights (the Hugging Face Hub layout of open_clip and
  timm, and langmim's export), whose ``model_cfg.quick_gelu`` says it;
- otherwise nothing; the open_clip model name then decides (``-quickgelu`` names build QuickGELU),
  with a loud warning where open_clip knows QuickGELU weights for that architecture.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import read_weights
from .pretrained import OPEN_CLIP_FILES, load_strictly

OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class TrainedActivation:
    quick_gelu: bool | None  # None: the files do not say
    evidence: str


def weights_file(path: str | Path) -> Path:
    """The weights file itself: ``path``, or the open_clip weights file inside a folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in OPEN_CLIP_FILES if (path / name).is_file()]
        if not found:
            raise CheckpointError(f"folder '{path}' holds none of the weight files {', '.join(OPEN_CLIP_FILES)}")
        return found[0]
    if not path.is_file():
        raise CheckpointError(f"weights '{path}' not found")
    return path


def trained_activation(path: str | Path, state: dict[str, torch.Tensor]) -> TrainedActivation:
    """What the weights at ``path`` (already read into ``state``) were trained with."""
    path = weights_file(path)
    if any(key in state for key in OPENAI_ONLY_KEYS):
        return TrainedActivation(True, f"'{path}' is in OpenAI's CLIP layout ({', '.join(OPENAI_ONLY_KEYS)} entries)")
    config = path.parent / "open_clip_config.json"
    if config.is_file():
        try:
            quick = bool(json.loads(config.read_text())["model_cfg"].get("quick_gelu", False))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"'{config}' is not an open_clip config (expected a JSON object with model_cfg)") from None
        return TrainedActivation(quick, f"'{config}' says quick_gelu={str(quick).lower()}")
    return TrainedActivation(None, f"nothing beside '{path}' records the activation")


def quick_gelu_tags(model_name: str) -> list[str]:
    """open_clip's pretrained tags for ``model_name`` whose weights need QuickGELU (e.g. openai)."""
    import open_clip

    return [tag for tag in open_clip.list_pretrained_tags_by_model(model_name)
            if open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False)]


def choose_quick_gelu(model_name: str, trained: TrainedActivation, what: str) -> bool:
    """Whether to force QuickGELU onto ``model_name``, or raise where the weights contradict it."""
    import open_clip

    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ConfigError(f"{what}: unknown open_clip model {model_name!r} (see open_clip.list_models())")
    named_quick = bool(model_cfg.get("quick_gelu", False))
    if trained.quick_gelu is False and named_quick:
        raise ConfigError(f"{what}: {trained.evidence}, but open_clip {model_name} builds QuickGELU; use the name without -quickgelu")
    if trained.quick_gelu and not named_quick:
        print(f"{what}: {trained.evidence}: trained with QuickGELU, so {model_name} is built with QuickGELU")
        return True
    if trained.quick_gelu is None and not named_quick and quick_gelu_tags(model_name):
        print(f"WARNING: {what}: {trained.evidence}; building {model_name} with GELU. open_clip's "
              f"{', '.join(quick_gelu_tags(model_name))} weights for it need QuickGELU: if these are those, use "
              f"{model_name}-quickgelu, or the features will be wrong without any error", file=sys.stderr)
    return False


def create_open_clip(model_name: str, weights: str | Path, what: str):
    """open_clip ``model_name`` (or ``local-dir:FOLDER``, built from the folder's config) loaded
    strictly from ``weights`` (a file or a Hub-layout folder), with QuickGELU wherever the weights
    need it."""
    import open_clip

    path = weights_file(weights)
    state = read_weights(path, OPEN_CLIP_FILES)
    force = choose_quick_gelu(model_name, trained_activation(path, state), what)
    try:  # a local-dir model loads its folder's weights as it is built
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=force)
        if any(key in state for key in OPENAI_ONLY_KEYS):
            model.load_state_dict({k: v for k, v in state.items() if k not in OPENAI_ONLY_KEYS}, strict=True)
        else:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as err:  # open_clip raises several kinds; all mean "not these weights"
        raise CheckpointError(f"{what}: '{path}' does not load into open_clip {model_name}: {str(err).splitlines()[0]}") from None
    return model


def load_open_clip_text(text: nn.Module, path: str | Path, quick_gelu: bool) -> None:
    """Initialise the CLIP text tower (built with QuickGELU where ``quick_gelu``) from open_clip
    weights: a ``CLIP`` (text keys at the top level) or a ``CustomTextCLIP`` / langmim export
    (keys under ``text.``). Weights that record another activation are refused."""
    path = weights_file(path)
    state = read_weights(path, OPEN_CLIP_FILES)
    trained = trained_activation(path, state)
    built = "QuickGELU" if quick_gelu else "GELU"
    if trained.quick_gelu is not None and trained.quick_gelu != quick_gelu:
        raise ConfigError(f"init.text: {trained.evidence}, but the text tower is built with {built}; "
                          f"set model.text_quick_gelu={str(trained.quick_gelu).lower()}")
    if trained.quick_gelu is None:
        print(f"WARNING: init.text: {trained.evidence}; the text tower uses {built} (model.text_quick_gelu={str(quick_gelu).lower()}). "
              "OpenAI's CLIP weights need QuickGELU, most others GELU: a wrong choice loads and gives wrong features", file=sys.stderr)
    own = text.state_dict()
    if any(k.startswith("text.") for k in state):
        picked = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    else:
        picked = {k: v for k, v in state.items() if k.split(".")[0] in {n.split(".")[0] for n in own}}
    load_strictly(text, {k: v for k, v in picked.items() if k in own or not k.endswith("attn_mask")}, str(path), "text tower")
