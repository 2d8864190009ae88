"""Text towers: CLIP's causal transformer (open_clip) with its BPE tokenizer, or a
sentence-transformers model on disk (``init.text=sentence-transformers:FOLDER``) with its own."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU, TextTransformer
from torch import nn

from .pretrained import build_sentence_transformer, sentence_transformer_tokenizer, split_text_source

VOCAB_SIZE = 49408  # OpenAI CLIP's BPE vocabulary, shipped inside open_clip_torch


def sentence_transformer_folder(source: str | None):
    """The folder of ``sentence-transformers:FOLDER``, or None for the CLIP text tower."""
    if source is None:
        return None
    kind, path = split_text_source(source)
    return path if kind == "sentence-transformers" else None


def build_text_tower(
    width: int, depth: int, heads: int, context_length: int, embed_dim: int, source: str | None = None, quick_gelu: bool = False,
) -> nn.Module:
    """Maps token ids (B, L) to text embeddings (B, E): the CLIP causal transformer pooled at the
    end-of-text token, then ``text_projection``; or the sentence-transformers model's pooled
    output, then ``proj``."""
    folder = sentence_transformer_folder(source)
    if folder is not None:
        return build_sentence_transformer(folder, embed_dim)
    return TextTransformer(
        context_length=context_length,
        vocab_size=VOCAB_SIZE,
        width=width,
        heads=heads,
        layers=depth,
        output_dim=embed_dim,
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )


def build_tokenizer(context_length: int, source: str | None = None) -> Callable[[Sequence[str] | str], torch.Tensor]:
    """The text tower's tokenizer; texts longer than the context are truncated."""
    folder = sentence_transformer_folder(source)
    if folder is not None:
        return sentence_transformer_tokenizer(folder, context_length)
    return SimpleTokenizer(context_length=context_length)


def lock_text_tower(text: nn.Module) -> None:
    """Freeze a text tower except its projection into the joint space (``text_projection`` of
    the CLIP tower, ``proj`` of a sentence-transformers one)."""
    for name, param in text.named_parameters():
        param.requires_grad = name == "text_projection" or name.startswith("proj.")


def projection_name(text: nn.Module) -> str:
    """The trainable projection a locked tower keeps: ``text_projection`` (CLIP) or ``proj``."""
    return "text_projection" if hasattr(text, "text_projection") else "proj"


class LockedTextRunner:
    """Runs a locked tower under autocast: its frozen part from a copy in the autocast dtype
    with autocast off, then its trainable projection live. Autocast would re-cast every frozen
    weight on each call, and torch's matmul sends ``nn.MultiheadAttention``'s in-projection of a
    weight without ``requires_grad`` down an unfolded, weight-expanding batched matmul. The copy
    is kept here, not in a module, so it stays out of the state dict and leaves the saved weights
    untouched; it is remade when the autocast dtype or the device changes."""

    def __init__(self) -> None:
        self.key: tuple[torch.dtype, torch.device] | None = None
        self.tower: nn.Module | None = None

    def frozen_copy(self, text: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """The tower without its projection, in ``dtype`` on ``device``, made once per (dtype, device)."""
        if self.tower is None or self.key != (dtype, device):
            tower = copy.deepcopy(text)
            name = projection_name(text)
            setattr(tower, name, None if name == "text_projection" else nn.Identity())
            # requires_grad on the copy costs nothing under no_grad, and keeps torch's matmul folding the
            # batch of a transposed 3-D input into one GEMM instead of expanding the weight (18x slower in bf16)
            self.key, self.tower = (dtype, device), tower.to(device=device, dtype=dtype).requires_grad_(True)
        return self.tower

    def __call__(self, text: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        device, dtype = tokens.device, torch.get_autocast_dtype(tokens.device.type)
        tower = self.frozen_copy(text, dtype, device).train(text.training)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            pooled = tower(tokens)
        projection = getattr(text, projection_name(text))
        return pooled @ projection if isinstance(projection, nn.Parameter) else projection(pooled)
