"""Zero-shot over garment x colour concepts, split by how often the web world shows each in
pre-training: the long-tail question of arXiv 2404.04125 (zero-shot accuracy falls with a concept's
pre-training frequency) asked of the built-in world.

Test items are single Fashion-MNIST test garments in the centre, each in a colour drawn uniformly,
so every concept is measured alike; the prompt of concept (garment, colour) is "a {colour} {garment}"
in a few templates, and an image is right when the nearest of the 100 concepts is its own. Head and
tail are the web world's most and least frequent concepts (the run's own ``data.web`` settings);
on a clean-world run the split is a control: there every colour of a garment is equally common.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.eval_rows import seeded_subset
from ..data.fashion_mnist import CLASS_NAMES
from ..data.scenes import COLOURS, FashionMNISTCentred
from ..data.scenes.web import concept_frequencies, head_tail_concepts
from ..transforms import fill_template
from ..worlds import NUM_CONCEPTS, WebWorld
from .registry import task
from .zeroshot import zeroshot_classifier

if TYPE_CHECKING:
    from .context import EvalContext

CONCEPT_TEMPLATES = ("a photo of a {}.", "a {} in the centre.", "there is a {} in the middle.", "an image showing a {}.")
COLOUR_TAG = 0xC0C  # the colours' generator, apart from the rows' own draw


def concept_names() -> list[str]:
    """The prompt name of each concept id (label * len(COLOURS) + colour index)."""
    return [f"{colour} {garment}" for garment in CLASS_NAMES for colour in COLOURS]


def coloured_test_items(ctx: EvalContext) -> tuple[FashionMNISTCentred, np.ndarray]:
    """The first ``eval.test_size`` seeded test items, each in a seeded uniform colour; and each
    row's colour index."""
    rows = seeded_subset(10000, ctx.cfg.test_size, ctx.cfg.seed)
    colour_index = np.random.default_rng([ctx.cfg.seed, COLOUR_TAG]).integers(len(COLOURS), size=len(rows))
    names = list(COLOURS)
    items = FashionMNISTCentred("test", ctx.canvas, indices=rows, root=ctx.data_root, colours=[names[c] for c in colour_index])
    return items, colour_index


def concept_scores(predicted: np.ndarray, truth: np.ndarray, world: WebWorld) -> dict[str, float]:
    """Top-1 over all rows, over head- and tail-concept rows, the garment and the colour alone
    (percent), and the slope of per-concept accuracy against log10 pre-training frequency."""
    head, tail = head_tail_concepts(world)
    right = predicted == truth
    ncolours = len(COLOURS)
    per_concept = np.array([right[truth == c].mean() if (truth == c).any() else np.nan for c in range(NUM_CONCEPTS)])
    seen = ~np.isnan(per_concept)
    slope = np.polyfit(np.log10(concept_frequencies(world)[seen]), 100 * per_concept[seen], 1)[0] if seen.sum() > 1 else float("nan")
    return {
        "top1": 100 * float(right.mean()),
        "head_top1": 100 * float(right[np.isin(truth, head)].mean()),
        "tail_top1": 100 * float(right[np.isin(truth, tail)].mean()),
        "garment_top1": 100 * float((predicted // ncolours == truth // ncolours).mean()),
        "colour_top1": 100 * float((predicted % ncolours == truth % ncolours).mean()),
        "points_per_decade": float(slope),
    }


@task("concepts", headline="top1", dataset="fashion-mnist-coloured", needs_text=True)
def concepts_task(ctx: EvalContext) -> dict[str, Any]:
    items, colour_index = coloured_test_items(ctx)
    feats = ctx.image_features(items, f"fashion-mnist-coloured|seed{ctx.cfg.seed}")
    classifier = zeroshot_classifier(ctx.model, concept_names(), CONCEPT_TEMPLATES, fill=fill_template)
    with torch.no_grad():
        logits = torch.nn.functional.normalize(feats["embed"].float(), dim=-1) @ classifier.float().to(feats["embed"].device)
    truth = feats["labels"].cpu().numpy() * len(COLOURS) + colour_index
    config = ctx.model.config
    world = config.data.web if config is not None else WebWorld()
    head, tail = head_tail_concepts(world)
    metrics = concept_scores(logits.argmax(dim=1).cpu().numpy(), truth, world)
    metrics["head_minus_tail"] = metrics["head_top1"] - metrics["tail_top1"]
    return {"metrics": metrics,
            "details": {"templates": list(CONCEPT_TEMPLATES), "head_concepts": [concept_names()[c] for c in head],
                        "tail_concepts": [concept_names()[c] for c in tail], "zipf_exponent": world.zipf_exponent,
                        "pretraining_world": config.data.world if config is not None else None},
            "split_sizes": {"test": len(truth), "head": int(np.isin(truth, head).sum()), "tail": int(np.isin(truth, tail).sum())}}
