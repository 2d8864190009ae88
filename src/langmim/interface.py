"""The one interface a loaded model offers: what ``langmim.load`` returns, what evaluation,
the demo and the figures take, and what external timm / open_clip models implement
(``eval/external.py``). A langmim model is a ``PretrainMethod`` that meets it; nothing is
attached to it at run time."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from .config import Config


@runtime_checkable
class LoadedModel(Protocol):
    """An image encoder (and, where ``has_text``, a text encoder) ready for inference."""

    source: str  # what it is: a langmim method name ("rils") or an external spec ("timm:vit_small_patch16_224")
    config: Config | None  # a langmim model's resolved config; None for an external model
    image_size: int  # the input side in pixels
    has_text: bool  # encode_text, tokenizer: zero-shot and retrieval
    visual: nn.Module  # forward_features(images) -> CLS then patch tokens, normed; pool(tokens, "mean" | "cls")
    tokenizer: Callable[[list[str]], Tensor] | None
    preprocess: Callable | None  # PIL image -> normalised tensor at image_size
    checkpoint_path: str | None  # the file it was loaded from
    step: int | None  # the training step of that checkpoint

    def image_embedding(self, tokens: Tensor) -> Tensor:
        """Un-normalised image embedding from ``visual.forward_features`` tokens."""

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Images in langmim's normalisation at ``image_size`` -> embeddings."""

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """Tokenised captions -> embeddings (a clear error without a text tower)."""
