"""Image-text retrieval: recall@k in both directions (open_clip ``metrics``, CLIP_benchmark).

Generated captions repeat ("a white bag in the centre." describes many scenes), so a retrieved
caption counts as a hit when its text equals the query image's caption, and a retrieved image
counts as a hit when its caption equals the query text.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10)


def relevance_from_captions(captions: Sequence[str]) -> Tensor:
    """(n, n) bool: image i and caption j match where caption j's text equals caption i's."""
    ids = {text: i for i, text in enumerate(dict.fromkeys(captions))}
    codes = torch.tensor([ids[c] for c in captions])
    return codes[:, None] == codes[None, :]


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
