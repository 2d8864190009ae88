"""CLIP text tower (open_clip's causal transformer) and its BPE tokenizer."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer

VOCAB_SIZE = 49408  # OpenAI CLIP's BPE vocabulary, shipped inside open_clip_torch


def build_text_tower(width: int, depth: int, heads: int, context_length: int, embed_dim: int) -> TextTransformer:
    """Causal transformer pooled at the end-of-text token, then ``text_projection`` to E."""
    return TextTransformer(
        context_length=context_length,
        vocab_size=VOCAB_SIZE,
        width=width,
        heads=heads,
        layers=depth,
        output_dim=embed_dim,
    )


def build_tokenizer(context_length: int) -> Callable[[Sequence[str] | str], torch.Tensor]:
    """open_clip's tokenizer; texts longer than the context are truncated (EOT kept)."""
    return SimpleTokenizer(context_length=context_length)
