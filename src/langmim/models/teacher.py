"""Frozen, language-supervised image towers that MILAN distils: every token's feature (CLS and
patches, after the tower's final norm and projection) and how much each patch matters.

Two sources, named by ``teacher.source``:
- ``openclip:MODEL:WEIGHTS``: an open_clip ViT image tower (any open_clip model name) with a
  local weights file in open_clip's or OpenAI's state-dict layout, loaded by open_clip itself;
- ``langmim:RUN_OR_CHECKPOINT``: the vision tower and image projection of a langmim CLIP or RILS
  checkpoint.
The teacher sees the student's crop, converted from langmim's normalisation to its own and
resized where its patch size differs, so that its patch grid matches the student's.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IMPORTANCES
from ..errors import CheckpointError, ConfigError

LANGMIM_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # data.scenes.IMAGE_MEAN / IMAGE_STD


@dataclass
class TeacherOutput:
    tokens: torch.Tensor  # (B, 1 + N, E_t): CLS then patches, after final norm and projection
    cls_attention: torch.Tensor  # (B, N): last block, CLS query -> patch keys, mean over heads
    embedding: torch.Tensor  # (B, E_t): the tower's pooled image embedding (un-normalised)


class Renormalise(nn.Module):
    """langmim-normalised images -> another model's normalisation (one affine map per channel)."""

    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        in_mean, in_std = LANGMIM_NORMALISATION
        self.register_buffer("scale", (torch.tensor(in_std) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((torch.tensor(in_mean) - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale + self.shift


class Teacher(nn.Module, abc.ABC):
    """A frozen tower: eval mode for good, no gradients, its own input normalisation."""

    def __init__(self, grid_size: int, patch_size: int, embed_dim: int, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.grid_size, self.patch_size, self.embed_dim = grid_size, patch_size, embed_dim
        self.renormalise = Renormalise(mean, std)

    def freeze(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a frozen teacher never leaves eval mode

    def check_grid(self, student_grid: int) -> None:
        if student_grid != self.grid_size:
            raise ConfigError(
                f"teacher.source has a {self.grid_size}x{self.grid_size} patch grid but the student has "
                f"{student_grid}x{student_grid}; set model.img_size / model.patch_size so that they match"
            )

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """langmim-normalised images -> the teacher's normalisation at its own resolution."""
        pixels = self.renormalise(images)
        side = self.grid_size * self.patch_size
        if pixels.shape[-1] != side:  # resizing is linear, so it commutes with the renormalisation
            pixels = F.interpolate(pixels, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        return pixels

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherOutput:
        return self.encode(self.prepare(images))

    @abc.abstractmethod
    def encode(self, pixels: torch.Tensor) -> TeacherOutput:
        """Features of pixels already in the teacher's normalisation and resolution."""

    def importance(self, out: TeacherOutput, kind: str) -> torch.Tensor:
        """(B, N) non-negative weights for semantic-aware masking.

        ``attention``: the CLS-to-patch attention (the paper; right for OpenAI CLIP, whose CLS
        token is the pooled output). ``similarity``: each patch feature's cosine similarity to
        the pooled embedding, shifted to [0, 2] (right for towers that pool the patch mean, whose
        CLS query nothing trains).
        """
        if kind == "attention":
            return out.cls_attention
        if kind == "similarity":
            patches = F.normalize(out.tokens[:, 1:], dim=-1)
            pooled = F.normalize(out.embedding, dim=-1)
            return (patches @ pooled.unsqueeze(-1)).squeeze(-1) + 1.0
        raise ConfigError(f"teacher.importance must be one of {', '.join(IMPORTANCES)}; got {kind!r}")


class OpenCLIPTeacher(Teacher):
    """An open_clip ViT image tower; the last block is unrolled to read its attention."""

    def __init__(self, model_name: str, weights: str | None) -> None:
        import open_clip

        try:
            model = open_clip.create_model(model_name, pretrained=None)
        except RuntimeError as err:
            raise ConfigError(f"teacher.source: unknown open_clip model {model_name!r} ({err})") from None
        if weights is not None:
            try:
                open_clip.load_checkpoint(model, weights, strict=True, weights_only=True)
            except FileNotFoundError:
                raise CheckpointError(f"teacher weights '{weights}' not found") from None
            except Exception as err:  # open_clip raises several kinds; all mean "not these weights"
                raise CheckpointError(f"teacher weights '{weights}' do not load into open_clip {model_name}: {str(err).splitlines()[0]}") from None
        visual = model.visual
        if not hasattr(visual, "transformer") or visual.attn_pool is not None or visual.final_ln_after_pool:
            raise ConfigError(f"teacher.source: open_clip {model_name} is not a plain ViT image tower")
        grid = visual.grid_size[0]
        patch = visual.patch_size[0]
        preprocess = open_clip.get_model_preprocess_cfg(model)
        super().__init__(grid, patch, visual.output_dim, tuple(preprocess["mean"]), tuple(preprocess["std"]))
        self.visual = visual
        self.freeze()

    def encode(self, pixels: torch.Tensor) -> TeacherOutput:
        v = self.visual
        x = v._embeds(pixels)
        *blocks, last = v.transformer.resblocks
        for block in blocks:
            x = block(x)
        h = last.ln_1(x)
        attended, weights = last.attn(h, h, h, need_weights=True, average_attn_weights=True)
        x = x + last.ls_1(attended)
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        tokens = v.ln_post(x) @ v.proj
        pooled = tokens[:, 1:].mean(dim=1) if v.pool_type == "avg" else tokens[:, 0]
        return TeacherOutput(tokens=tokens, cls_attention=weights[:, 0, 1:], embedding=pooled)


class LangmimTeacher(Teacher):
    """The vision tower and image projection W of a langmim CLIP or RILS checkpoint."""

    def __init__(self, path: str) -> None:
        from ..api import load

        model = load(path)
        if not model.has_text:
            raise ConfigError(f"teacher.source: '{path}' is a {model.config.method} checkpoint; a teacher must be language-supervised (clip or rils)")
        visual = model.visual
        super().__init__(visual.grid_size, visual.patch_size, model.image_projection.shape[1], *LANGMIM_NORMALISATION)
        self.visual = visual
        self.image_projection = model.image_projection
        self.freeze()

    def encode(self, pixels: torch.Tensor) -> TeacherOutput:
        tokens, attention = self.visual.forward_with_cls_attention(pixels)
        projected = tokens @ self.image_projection
        return TeacherOutput(tokens=projected, cls_attention=attention, embedding=projected[:, 1:].mean(dim=1))


def build_teacher(source: str | None) -> Teacher:
    """``openclip:MODEL:WEIGHTS`` or ``langmim:RUN_OR_CHECKPOINT``."""
    if not source:
        raise ConfigError("method=milan needs teacher.source=openclip:MODEL:WEIGHTS or teacher.source=langmim:RUN_OR_CHECKPOINT")
    kind, _, rest = source.partition(":")
    if kind == "openclip":
        model_name, _, weights = rest.partition(":")
        if not model_name or not weights:
            raise ConfigError(f"teacher.source={source!r}: expected openclip:MODEL:WEIGHTS, e.g. openclip:ViT-B-16:/data/vit_b16.pt")
        return OpenCLIPTeacher(model_name, weights)
    if kind == "langmim" and rest:
        return LangmimTeacher(rest)
    raise ConfigError(f"teacher.source={source!r} must start with openclip:MODEL:WEIGHTS or langmim:RUN_OR_CHECKPOINT")
