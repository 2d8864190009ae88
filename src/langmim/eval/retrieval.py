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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.folders import CaptionTable
from ..transforms import to_float
from .inference import evaluating
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext

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


def blind_recall_at_k(relevant: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The text-only control of image-to-text recall: the R@k of the best ranking that never sees
    the image (one fixed order of the texts for every image), its texts taken greedily to cover the
    most images; exact when each image has one caption text, since the best blind ranking then
    lists the commonest texts first. Repeated captions make retrieval partly solvable this way."""
    covered = torch.zeros(relevant.shape[0], dtype=torch.bool)
    out = {}
    for k in range(1, min(max(ks), relevant.shape[1]) + 1):
        covered |= relevant[:, (relevant & ~covered[:, None]).sum(dim=0).argmax()]
        if k in ks:
            out[f"text_only_image_to_text_R@{k}"] = 100.0 * covered.double().mean().item()
    return out


def image_captions_batch(samples: list[dict]) -> dict[str, Any]:
    """Images and, per image, its captions (one for the built-in scenes and tables, several in
    a CLIP_benchmark retrieval set)."""
    return {"image": torch.stack([s["image"] for s in samples]),
            "captions": [s["captions"] if "captions" in s else [s["caption"]] for s in samples]}


def retrieval_pairs(ctx: EvalContext) -> tuple[Dataset, str | None, list[str], bool]:
    """(image-caption data set, its name where not the built-in one, the samples it skipped,
    whether a caption with the same text as an image's own is a hit)."""
    benchmark = ctx.benchmark_set
    if benchmark is not None and benchmark.kind == "retrieval":
        return benchmark.test, benchmark.name, benchmark.test.skipped, benchmark.same_text_hits
    if ctx.table:
        table = CaptionTable(ctx.dataset, ctx.canvas, ctx.cfg.max_image_pixels)
        return table, Path(ctx.dataset).stem, table.skipped, True
    return ctx.scenes("test", ctx.cfg.retrieval_size), None, [], True


@task("retrieval", headline="image_to_text_R@1", dataset="fashion-scenes-captions", needs_text=True)
@torch.no_grad()
def retrieval_task(ctx: EvalContext) -> dict[str, Any]:
    """Recall@1/5/10 both ways on image-caption pairs (what counts as a hit: ``relevance_from_captions``)."""
    model = ctx.model
    pairs, name, skipped, same_text = retrieval_pairs(ctx)
    images, texts, image_captions = [], [], []
    with evaluating(model) as device:
        for batch in DataLoader(pairs, batch_size=ctx.cfg.batch_size, collate_fn=image_captions_batch):
            images.append(model.encode_image(to_float(batch["image"].to(device))).float().cpu())
            flat = [c for captions in batch["captions"] for c in captions]
            texts.append(model.encode_text(model.tokenizer(flat).to(device)).float().cpu())
            image_captions += batch["captions"]
    similarity = F.normalize(torch.cat(images), dim=-1) @ F.normalize(torch.cat(texts), dim=-1).T
    relevant = relevance_from_captions(image_captions, same_text)
    metrics = {**recall_at_k(similarity, relevant), **blind_recall_at_k(relevant)}
    captions = [c for per_image in image_captions for c in per_image]
    result = {"metrics": metrics, "details": {"captions": len(captions), "distinct_captions": len(set(captions)),
                                              "same_text_hits": same_text},
              "split_sizes": {"test": len(image_captions)}}
    if name is not None:
        result["dataset"] = name
        result["details"]["skipped"] = skipped  # unusable images and empty captions, named
    return result
