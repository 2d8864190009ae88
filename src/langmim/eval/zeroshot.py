"""Zero-shot classification from text embeddings of prompted class names (CLIP / SLIP)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langmim.eval.metrics import mean_per_class_recall, topk_accuracy

from .inference import evaluating
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext


@torch.no_grad()
def zeroshot_classifier(
    model: nn.Module,
    classnames: Sequence[str],
    templates: Sequence[str],
    fill: Callable[[str, str], str] | None = None,
) -> Tensor:
    """(E, C) matrix whose column c is the normalised mean of the normalised text embeddings
    of class c under every template.

    `model` needs a `tokenizer(list[str]) -> LongTensor` and `encode_text(tokens) -> (n, E)`.
    A template is filled with `fill(template, name)` if given, else `template.format(name)`.
    The model runs in eval mode; its previous mode is restored afterwards.
    """
    with evaluating(model) as device:
        columns = []
        for name in classnames:
            texts = [fill(t, name) if fill else t.format(name) for t in templates]
            embeddings = model.encode_text(model.tokenizer(texts).to(device)).float()
            columns.append(F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=0))
    return torch.stack(columns, dim=1)


@torch.no_grad()
def zeroshot_scores(
    image_embeddings: Tensor, labels: Tensor, classifier: Tensor
) -> dict[str, float]:
    """Top-1, top-5 and mean per-class recall (percent) of argmax-cosine zero-shot predictions."""
    device = image_embeddings.device
    logits = F.normalize(image_embeddings.float(), dim=-1) @ classifier.float().to(device)
    labels = labels.to(device)
    top = topk_accuracy(logits, labels, ks=(1, 5))
    return {
        "top1": top[1],
        "top5": top[5],
        "mean_per_class_recall": mean_per_class_recall(
            logits.argmax(dim=1), labels, classifier.shape[1]
        ),
    }


def shared_classifier(ctx: EvalContext) -> Tensor:
    """The zero-shot classifier of the classification data's class names, built once per
    evaluation and shared by the tasks that read it (zeroshot, shift)."""
    data = ctx.classification
    return ctx.cache.remember(f"zeroshot-classifier|{data.name}",
                              lambda: zeroshot_classifier(ctx.model, data.classnames, data.templates, fill=data.fill))


@task("zeroshot", headline="top1", needs_text=True)
def zeroshot_task(ctx: EvalContext) -> dict[str, Any]:
    test = ctx.classification_features("test")
    return {"metrics": zeroshot_scores(test["embed"], test["labels"], shared_classifier(ctx)),
            "details": {"templates": list(ctx.classification.templates), "classnames": ctx.classification.classnames},
            "split_sizes": ctx.classification_sizes(train=False)}
