"""Image-text retrieval: recall@k in both directions (open_clip ``metrics``, CLIP_benchmark).

Generated captions repeat ("a white bag in the centre." describes many scenes), so on the
built-in scenes and caption tables a retrieved caption counts as a hit when its text equals one of
the query image's captions, and a retrieved image counts as a hit when one of its captions equals
the query text. On a CLIP_benchmark set (unless langmim wrote it) only an image's own captions
count, as CLIP_benchmark counts them. An image may have
several captions; the texts are all images' captions in order.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10)


def relevance_from_captions(captions: Sequence[str] | Sequence[Sequence[str]], same_text: bool = True) -> Tensor:
    """(images, texts) bool: image i and text j match where text j is one of image i's captions
    (``same_text``: or has the same text as one). ``captions`` has one caption per image, or a
    list of them per image; the texts are every caption in that order."""
    per_image = [[c] if isinstance(c, str) else list(c) for c in captions]
    texts = [c for image in per_image for c in image]
    if not same_text:
        owner = torch.tensor([i for i, image in enumerate(per_image) for _ in image])
        return torch.arange(len(per_image))[:, None] == owner[None, :]
    ids = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    owns = torch.zeros(len(per_image), len(ids), dtype=torch.bool)  # image i has a caption with text id k
    for i, image in enumerate(per_image):
        owns[i, [ids[c] for c in image]] = True
    return owns[:, torch.tensor([ids[t] for t in texts])]


def recall_at_k(similarity: Tensor, relevant: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Percent of queries with a relevant item among their top k, both directions.

    ``similarity`` and ``relevant`` are (images, texts); rows query texts for an image
    (``image_to_text_R@k``), columns query images for a text (``text_to_image_R@k``).
    """
    out = {}
    for direction, sim, rel in (("image_to_text", similarity, relevant), ("text_to_image", similarity.T, relevant.T)):
        order = sim.topk(min(max(ks), sim.shape[1]), dim=1).indices
        hits = torch.gather(rel, 1, order)
        for k in ks:
            out[f"{direction}_R@{k}"] = 100.0 * hits[:, :k].any(dim=1).double().mean().item()
    return out
