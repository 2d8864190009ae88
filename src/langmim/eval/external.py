"""External baselines in the same evaluation table: a timm ViT or an open_clip model with
weights on disk (``timm:MODEL:WEIGHTS``, ``openclip:MODEL:WEIGHTS``), or a folder either library
writes (``timm:local-dir:FOLDER``, ``openclip:local-dir:FOLDER``: langmim's exports among them).

The adapter implements ``LoadedModel`` (``interface.py``), what the evaluation suite takes of a
langmim model: ``visual.forward_features`` (CLS then patch tokens after the final norm),
``visual.pool``, ``image_embedding``, ``encode_image``, and for open_clip ``encode_text`` with
its tokenizer. Images arrive in langmim's normalisation at the model's input size (its
``preprocess`` makes them) and are converted to the model's own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, LangmimError
from ..io import read_weights
from ..models.open_clip_weights import create_open_clip
from ..models.pretrained import TIMM_FILES
from ..models.teacher import Renormalise
from ..models.vit import MaskedVisionTransformer
from ..transforms import build_preprocess
from .external_spec import parse_external


class TimmTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        cfg = model.pretrained_cfg
        self.renormalise = Renormalise(tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3)))
        self.prefix = getattr(model, "num_prefix_tokens", 1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(self.renormalise(images))
        return torch.cat([tokens[:, :1], tokens[:, self.prefix:]], dim=1)

    pool = staticmethod(MaskedVisionTransformer.pool)


class OpenCLIPTower(nn.Module):
    def __init__(self, visual: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.visual = visual
        self.renormalise = Renormalise(mean, std)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        return v.ln_post(v.transformer(v._embeds(self.renormalise(images))))

    pool = staticmethod(MaskedVisionTransformer.pool)


class ExternalModel(nn.Module):
    """A timm or open_clip model as a ``LoadedModel``; it has no langmim config."""

    config = None
    step = None

    def __init__(self, kind: str, name: str, weights: str, visual: nn.Module, image_size: int,
                 clip: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__()
        self.visual, self.clip, self.tokenizer = visual, clip, tokenizer
        self.source, self.image_size, self.checkpoint_path = f"{kind}:{name}", image_size, weights
        self.has_text = clip is not None
        self.preprocess = build_preprocess(image_size)

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.clip is None:  # timm: the model's own pooling of the normed tokens
            return self.visual.pool(tokens, "cls" if self.visual.model.global_pool == "token" else "mean")
        v = self.clip.visual
        pooled = tokens[:, 1:].mean(dim=1) if v.pool_type == "avg" else tokens[:, 0]
        return pooled @ v.proj

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.image_embedding(self.visual.forward_features(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.clip is None:
            raise LangmimError(f"'{self.source}' has no text tower; encode_text needs an openclip: model")
        return self.clip.encode_text(tokens, normalize=normalize)


def load_external(spec: str) -> ExternalModel:
    """``timm:MODEL:WEIGHTS`` or ``openclip:MODEL:WEIGHTS`` -> an evaluable model (eval mode); MODEL
    ``local-dir`` reads a folder the library writes (config and weights), e.g. langmim's exports."""
    parsed = parse_external(spec)
    kind, name, weights = parsed.kind, parsed.name, parsed.weights
    if kind == "timm":
        import timm

        if name == "local-dir":
            model = timm.create_model(parsed.library_name, pretrained=True, num_classes=0)
        else:
            try:
                model = timm.create_model(name, pretrained=False, num_classes=0)
            except RuntimeError as err:
                raise ConfigError(f"unknown timm model {name!r} ({err})") from None
            state = {k: v for k, v in read_weights(weights, TIMM_FILES).items() if not k.startswith("head.")}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise CheckpointError(f"'{weights}' does not load into timm {name}: {str(err).splitlines()[0]}") from None
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        return ExternalModel(kind, name, weights, TimmTower(model), size).eval()
    import open_clip

    model = create_open_clip(parsed.library_name, weights, "--checkpoint")
    preprocess = open_clip.get_model_preprocess_cfg(model)
    tower = OpenCLIPTower(model.visual, tuple(preprocess["mean"]), tuple(preprocess["std"]))
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    tokenizer = open_clip.get_tokenizer(parsed.library_name)
    return ExternalModel(kind, name, weights, tower, size, clip=model, tokenizer=tokenizer).eval()
