"""Compositional zero-shot accuracy: does the image prefer its caption to captions that change one thing?

For every scene of a `CompositionalScenes` and every kind of hard negative it has (garment, colour,
size, position, relation, swap), a pair counts as solved when the cosine similarity of the image to
its true caption is strictly higher than to each negative of that kind (ARO, SugarCrepe). A tie is a
failure, so a model that cannot tell the captions apart scores 0, not chance; the chance level
(a random ranking of the candidates) is reported beside the accuracy. Beside the model's figures
stands a blind control, a scorer of the captions alone fitted on pairs of training scenes
(`text_only.py`): a kind of negative it solves above chance can be solved without the image.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.compositional import KINDS, CompositionalScenes
from ..data.scenes import EVAL_SCENE_SEED, FashionScenes
from ..interface import LoadedModel
from ..transforms import to_float
from .inference import evaluating
from .metrics import compositional_accuracy
from .registry import task
from .text_only import text_only_control

if TYPE_CHECKING:
    from .context import EvalContext

TEXT_ONLY_TRAIN_SCENES = 1000  # the blind control's training scenes at most: enough for a text prior, seconds to draw
CAPTION_CANVAS = 16  # the smallest scene canvas: captions and negatives do not depend on it, and it renders fastest


def _batch(samples: list[dict]) -> dict:
    return {"image": torch.stack([s["image"] for s in samples]), "caption": [s["caption"] for s in samples],
            "negatives": [s["negatives"] for s in samples]}


@torch.no_grad()
def compositional_scores(model: LoadedModel, scenes: CompositionalScenes, batch_size: int = 256) -> dict:
    """Accuracy per kind of hard negative ("<kind>_acc"), their mean over the kinds that occur
    ("mean_acc", the headline), and per kind the chance level and the number of pairs. Each image
    and each distinct caption is encoded once."""
    if len(scenes) == 0:
        raise ValueError("compositional_scores needs at least one scene")
    images, captions, negatives = [], [], []
    with evaluating(model) as device:
        for batch in DataLoader(scenes, batch_size=batch_size, collate_fn=_batch):
            images.append(model.encode_image(to_float(batch["image"].to(device))).float().cpu())
            captions += batch["caption"]
            negatives += batch["negatives"]
        texts = list(dict.fromkeys([*captions, *(t for negs in negatives for kind in KINDS for t in negs[kind])]))
        text_embeds = torch.cat([model.encode_text(model.tokenizer(texts[i:i + batch_size]).to(device)).float().cpu()
                                 for i in range(0, len(texts), batch_size)])
    row = {text: i for i, text in enumerate(texts)}
    similarity = F.normalize(torch.cat(images), dim=-1) @ F.normalize(text_embeds, dim=-1).T
    metrics, chance, counts = {}, {}, {}
    for kind in KINDS:
        pairs = [(i, negs[kind]) for i, negs in enumerate(negatives) if negs[kind]]
        counts[kind] = len(pairs)
        if pairs:
            true_scores = torch.stack([similarity[i, row[captions[i]]] for i, _ in pairs])
            metrics[f"{kind}_acc"], chance[kind] = compositional_accuracy(
                true_scores, [similarity[i, [row[t] for t in negs]] for i, negs in pairs])
    mean = sum(metrics.values()) / len(metrics)
    metrics["mean_acc"] = mean
    return {"metrics": metrics, "details": {"chance": chance, "n": counts, "per_kind": scenes.per_kind}}


@task("compositional", headline="mean_acc", dataset="fashion-scenes-compositional", needs_text=True)
def compositional_task(ctx: EvalContext) -> dict[str, Any]:
    scenes = CompositionalScenes(ctx.scenes("test"), seed=ctx.cfg.seed)
    result = compositional_scores(ctx.model, scenes, ctx.cfg.batch_size)
    train = _training_pairs(ctx)
    control = text_only_control(train, scenes)
    result["metrics"].update(control["metrics"])
    result["details"].update(control["details"], text_only_train_scenes=len(train))
    result["split_sizes"] = {"test": len(scenes)}
    return result


def _training_pairs(ctx: EvalContext) -> CompositionalScenes:
    """The blind control's training pairs: scenes of train-split items (the scene probes' first
    ones, at most TEXT_ONLY_TRAIN_SCENES), their negatives drawn a seed apart from the test pairs'."""
    length = min(ctx.cfg.scene_train_size, TEXT_ONLY_TRAIN_SCENES)
    scenes = FashionScenes("train", CAPTION_CANVAS, seed=EVAL_SCENE_SEED, length=length, root=ctx.data_root)
    return CompositionalScenes(scenes, seed=ctx.cfg.seed + 1)
