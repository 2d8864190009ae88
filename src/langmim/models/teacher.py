"""Frozen, language-supervised image towers that MILAN distils: every token's feature (CLS and
patches, after the tower's final norm and projection) and how much each patch matters.

Three sources, named by ``teacher.source``:
- ``openclip:MODEL:WEIGHTS``: an open_clip ViT image tower (any open_clip model name) with a
  local weights file (or Hub folder) in open_clip's or OpenAI's state-dict layout, loaded by
  open_clip itself with the activation the weights need (``models/open_clip_weights.py``);
- ``timm:MODEL:WEIGHTS``: any timm ViT with a class token (DINO, DINOv2, supervised);
- ``langmim:RUN_OR_CHECKPOINT``: the vision tower and image projection of a langmim checkpoint
  of a method with a text tower (CLIP, SigLIP, FLIP, SLIP, RILS).
The teacher sees the student's crop, converted from langmim's normalisation to its own and
resized where its patch size differs, so that its patch grid matches the student's.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..method_specs import IMPORTANCES, methods_with
from ..transforms import IMAGE_MEAN, IMAGE_STD
from .open_clip_weights import create_open_clip
from .pretrained import load_timm_vision
from .vit import cls_attention


@dataclass
class TeacherOutput:
    tokens: torch.Tensor  # (B, 1 + N, E_t): CLS then patches, after final norm and projection
    cls_attention: torch.Tensor  # (B, N): last block, CLS query -> patch keys, mean over heads
    embedding: torch.Tensor  # (B, E_t): the tower's pooled image embedding (un-normalised)


class Renormalise(nn.Module):
    """langmim-normalised images -> another model's normalisation (one affine map per channel)."""

    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        in_mean, in_std = IMAGE_MEAN, IMAGE_STD
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
                f"milan.teacher.source has a {self.grid_size}x{self.grid_size} patch grid but the student has "
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
        """Features in float32. The frozen weights are cast in place to the dtype of the call
        (autocast's, else float32; weights once cast to bf16 keep its rounding; checkpoints never
        hold the teacher), and the tower runs with autocast off: autocast casts weights that need
        no gradient anew on every call, which made a CPU bf16 teacher slower than fp32
        (benchmarks/throughput.py, teacher rows)."""
        device = images.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        if self.renormalise.scale.dtype != dtype:
            self.to(dtype)
        with torch.autocast(device, enabled=False):
            out = self.encode(self.prepare(images.to(dtype)))
        return TeacherOutput(tokens=out.tokens.float(), cls_attention=out.cls_attention.float(), embedding=out.embedding.float())

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
        raise ConfigError(f"the teacher's importance must be one of {', '.join(IMPORTANCES)}; got {kind!r}")


class OpenCLIPTeacher(Teacher):
    """An open_clip ViT image tower, with the activation its weights need (QuickGELU for
    OpenAI's); the last block is unrolled to read its attention. No weights: random (dry runs)."""

    def __init__(self, model_name: str, weights: str | None) -> None:
        import open_clip

        if weights is None:
            try:
                model = open_clip.create_model(model_name, pretrained=None)
            except RuntimeError as err:
                raise ConfigError(f"milan.teacher.source: unknown open_clip model {model_name!r} ({err})") from None
        else:
            model = create_open_clip(model_name, weights, "milan.teacher.source")
        visual = model.visual
        if not hasattr(visual, "transformer") or visual.attn_pool is not None or visual.final_ln_after_pool:
            raise ConfigError(f"milan.teacher.source: open_clip {model_name} is not a plain ViT image tower")
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
        weights = mha_cls_attention(last.attn, h)
        x = x + last.ls_1(last.attn(h, h, h, need_weights=False)[0])
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        tokens = v.ln_post(x) @ v.proj
        pooled = tokens[:, 1:].mean(dim=1) if v.pool_type == "avg" else tokens[:, 0]
        return TeacherOutput(tokens=tokens, cls_attention=weights, embedding=pooled)


def mha_cls_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention of a batch-first ``nn.MultiheadAttention`` from the CLS query (token 0) to the
    other tokens, averaged over heads: (B, N). Computed beside the block (the CLS query and the
    keys only) so that the block itself keeps torch's fused path, which ``need_weights`` leaves:
    its unfused in-projection of frozen weights is many times slower on a CPU in bf16."""
    batch, length, width = x.shape
    heads = attn.num_heads
    dim = width // heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(x[:, :1], weight[:width], bias[:width]).view(batch, 1, heads, dim).transpose(1, 2)
    k = F.linear(x, weight[width:2 * width], bias[width:2 * width]).view(batch, length, heads, dim).transpose(1, 2)
    weights = ((q * dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights.mean(dim=1)[:, 0, 1:]


class TimmTeacher(Teacher):
    """Any timm ``VisionTransformer`` with a class token (DINO, DINOv2 with or without
    registers, supervised ViTs): the paper's teacher ablation. It runs at the student's patch
    grid (timm resamples its position embedding), its targets are the CLS and patch tokens
    after the final norm (register tokens left out), and its importance is the last block's
    CLS-to-patch attention."""

    def __init__(self, model: nn.Module, grid_size: int) -> None:
        from timm.data import resolve_model_data_config
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer) or model.cls_token is None or not hasattr(model.blocks[-1].attn, "qkv"):
            raise ConfigError(f"milan.teacher.source: timm {type(model).__name__} is not a plain ViT with a class token")
        data = resolve_model_data_config(model)
        super().__init__(grid_size, model.patch_embed.patch_size[0], model.num_features, tuple(data["mean"]), tuple(data["std"]))
        self.model = model
        self.freeze()

    @classmethod
    def from_source(cls, model_name: str, weights: str | None, grid_size: int) -> TimmTeacher:
        """timm ``model_name`` (no classifier, any input size) with ``weights`` from disk."""
        import timm

        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"milan.teacher.source: cannot build timm model {model_name!r} ({str(err).splitlines()[0]})") from None
        if weights is not None:
            load_timm_vision(model, weights, what=f"timm {model_name} teacher")
        return cls(model, grid_size)

    def encode(self, pixels: torch.Tensor) -> TeacherOutput:
        m, prefix = self.model, self.model.num_prefix_tokens
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels))))
        *blocks, last = m.blocks
        for block in blocks:
            x = block(x)
        attention = cls_attention(last.attn, last.norm1(x), num_prefix=prefix)
        x = m.norm(last(x))
        tokens = torch.cat([x[:, :1], x[:, prefix:]], dim=1)  # CLS and patches; registers dropped
        return TeacherOutput(tokens=tokens, cls_attention=attention, embedding=m.forward_head(x, pre_logits=True))


class LangmimTeacher(Teacher):
    """The vision tower and image projection W of a loaded langmim model with a text tower."""

    def __init__(self, model: nn.Module, path: str) -> None:
        if not model.has_text:
            raise ConfigError(f"milan.teacher.source: '{path}' is a {model.config.method} checkpoint; "
                              f"a teacher must be language-supervised ({methods_with('has_text')})")
        visual = model.visual
        super().__init__(visual.grid_size, visual.patch_size, model.image_projection.shape[1], IMAGE_MEAN, IMAGE_STD)
        self.visual = visual
        self.image_projection = model.image_projection
        self.freeze()

    def encode(self, pixels: torch.Tensor) -> TeacherOutput:
        tokens, attention = self.visual.forward_with_cls_attention(pixels)
        projected = tokens @ self.image_projection
        return TeacherOutput(tokens=projected, cls_attention=attention, embedding=projected[:, 1:].mean(dim=1))


SOURCES = "openclip:MODEL:WEIGHTS, timm:MODEL:WEIGHTS or langmim:RUN_OR_CHECKPOINT"
EXAMPLES = {"openclip": "ViT-B-16-quickgelu:/data/openai_vit_b16.pt", "timm": "vit_base_patch16_224.dino:/data/dino_vitb16.pth"}


@dataclass(frozen=True)
class TeacherSource:
    """``teacher.source`` read: its kind, the open_clip or timm model name (empty for langmim),
    and the weights file or folder (for langmim: the run directory or checkpoint)."""

    kind: str
    model: str
    location: str


def parse_teacher_source(source: str | None) -> TeacherSource:
    """``openclip:MODEL:WEIGHTS``, ``timm:MODEL:WEIGHTS`` or ``langmim:RUN_OR_CHECKPOINT``, with clear errors."""
    if not source:
        raise ConfigError(f"method=milan needs milan.teacher.source, one of {SOURCES}")
    kind, _, rest = source.partition(":")
    if kind in ("openclip", "timm"):
        model_name, _, weights = rest.partition(":")
        if not model_name or not weights:
            raise ConfigError(f"milan.teacher.source={source!r}: expected {kind}:MODEL:WEIGHTS, e.g. {kind}:{EXAMPLES[kind]}")
        return TeacherSource(kind, model_name, weights)
    if kind == "langmim" and rest:
        return TeacherSource(kind, "", rest)
    raise ConfigError(f"milan.teacher.source={source!r} must be one of {SOURCES}")


def build_library_teacher(source: TeacherSource, grid_size: int | None = None, random_weights: bool = False) -> Teacher:
    """An open_clip or timm teacher (a timm one built for the student's ``grid_size``), with its
    weights from disk or, for dry runs, ``random_weights``."""
    weights = None if random_weights else source.location
    if source.kind == "openclip":
        return OpenCLIPTeacher(source.model, weights)
    if grid_size is None:
        raise ConfigError("a timm teacher needs the student's patch grid")
    return TimmTeacher.from_source(source.model, weights, grid_size)
