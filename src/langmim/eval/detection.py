"""Detection probe on frozen patch tokens: an anchor-free dense head (FCOS / CenterNet spirit),
scored COCO-style (AP @[.5:.95], AP50, AP75) by torchmetrics' ``MeanAveragePrecision``.

The head is per-token: by default a 2-layer MLP (a shared Linear(D, 64) -> GELU trunk, then one
linear layer to C class logits and one to the box distances (l, t, r, b) from the token centre,
normalised by the image size); ``hidden=0`` makes it purely linear. Each token is read on its
own, so the score measures what each frozen token already knows about the object over it. The
small hidden layer is there because box edges are not linearly readable from a token the way
its class is: on tokens of the demo run (step 500, 8x8 refined grid) it lifts AP50 from about 16 to 26, while pure-noise
tokens stay near 0.

Tokens come as a grid (n, G, G, D) (or (n, G*G, D), row-major); token (i, j) is centred at
pixel ((j + 0.5) * stride, (i + 0.5) * stride), stride = image_size / G. Boxes are xyxy pixels.

Assignment (FCOS with centre sampling): a ground-truth box claims the tokens whose centres lie
inside it and within ``center_radius`` strides (default 1, about the 2x2 tokens nearest the
centre) of its centre (Chebyshev distance); a box that claims no token takes the token nearest its
centre; where boxes overlap, the smaller box wins. Unclaimed tokens are background, the
off-centre tokens of an object included, so the top-scoring token of an object is a central one
whose box is best placed (a centerness branch does this in FCOS; on tokens this small region did
better than FCOS's 1.5 strides).

Loss: sigmoid focal loss (alpha 0.25, gamma 2) over all tokens and classes, normalised by the
number of positive tokens, + 5 * L1 on the normalised distances + 2 * GIoU on the decoded boxes
(both over positive tokens). Sigmoid rather than an extra background class because background
is the majority of tokens (focal loss down-weights the easy ones) and per-class probabilities
are directly the detection scores to rank, with no softmax coupling between classes.

Training and inference run on one CPU thread (restored afterwards): the head's ops are small,
so more threads gain little, while on a loaded machine OpenMP's spin-waits made them up to 100x
slower (2 threads on a 2-core box shared with a training run); one thread also keeps the
summation order, hence the metrics, the same whatever the caller's thread count.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from ..data.fashion_mnist import CLASS_NAMES
from .registry import task

if TYPE_CHECKING:
    from .context import EvalContext

L1_WEIGHT, GIOU_WEIGHT = 5.0, 2.0
PRIOR_PROBABILITY = 0.01  # initial foreground probability of every class (RetinaNet's bias init)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the caller's setting (see module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _percent(value: Tensor) -> float | None:
    """A COCO value as a percentage; COCO's -1 (no ground truth) becomes None."""
    value = float(value)
    return None if value < 0 else 100.0 * value


def detection_metrics(predictions: list[dict], targets: list[dict], num_classes: int) -> dict:
    """COCO box AP of ``predictions`` against ``targets`` (one dict per image) in percent:
    ``ap`` (mean over IoU .5:.95), ``ap50``, ``ap75`` and ``ap50_per_class`` (length
    ``num_classes``; None for a class without ground truth). Predictions hold ``boxes`` (m, 4)
    xyxy, ``scores`` (m,) and ``labels`` (m,); targets hold ``boxes`` and ``labels``.

    One pycocotools evaluation: per-class AP50 is read off COCO's own interpolated precision
    table (mean over the 101 recall points, as COCOeval.summarize does), which gives what
    ``MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True)`` gives without the
    (C + 1) further evaluations that ``class_metrics`` costs."""
    preds = [{"boxes": p["boxes"].float().reshape(-1, 4), "scores": p["scores"].float(), "labels": p["labels"].long()} for p in predictions]
    truth = [{"boxes": t["boxes"].float().reshape(-1, 4), "labels": t["labels"].long()} for t in targets]
    coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True, backend="pycocotools")
    coco.update(preds, truth)
    result = coco.compute()
    # precision (IoU thresholds, 101 recall points, classes, area ranges, max detections); -1 = undefined
    iou50 = int(torch.isclose(torch.as_tensor(coco.iou_thresholds), torch.tensor(0.5)).nonzero()[0, 0])
    precision = result["precision"][iou50, :, :, 0, -1]  # all areas, 100 detections
    per_class: list[float | None] = [None] * num_classes
    for k, label in enumerate(result["classes"].reshape(-1).tolist()):
        curve = precision[:, k]
        if 0 <= label < num_classes and (curve > -1).any():
            per_class[label] = 100.0 * curve[curve > -1].mean().item()
    return {"ap": _percent(result["map"]), "ap50": _percent(result["map_50"]), "ap75": _percent(result["map_75"]), "ap50_per_class": per_class}


class DetectionHead(nn.Module):
    """Per-token class logits (C) and box distances (l, t, r, b) / image_size; linear, or a
    2-layer MLP (shared trunk of width ``hidden``) when ``hidden > 0``."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.GELU()) if hidden > 0 else nn.Identity()
        width = hidden if hidden > 0 else dim
        self.cls = nn.Linear(width, num_classes)
        self.box = nn.Linear(width, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return self.cls(h), self.box(h)


def _as_grid(tokens: Tensor) -> Tensor:
    """(n, G, G, D) as is; (n, G*G, D) row-major reshaped to (n, G, G, D)."""
    if tokens.dim() == 3:
        grid = int(round(tokens.shape[1] ** 0.5))
        if grid * grid != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
        tokens = tokens.reshape(tokens.shape[0], grid, grid, tokens.shape[2])
    if tokens.dim() != 4 or tokens.shape[1] != tokens.shape[2]:
        raise ValueError(f"expected tokens (n, G, G, D), got {tuple(tokens.shape)}")
    return tokens.float()


def token_centres(grid: int, image_size: float) -> Tensor:
    """(G*G, 2) pixel (x, y) centres of the tokens, row-major."""
    stride = image_size / grid
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) * stride
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def assign_targets(boxes: list[Tensor], labels: list[Tensor], grid: int, image_size: float, center_radius: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-token class (n, G*G) int64, -1 for background, and target box (n, G*G, 4) xyxy pixels
    (zeros on background). See the module docstring for the rule."""
    centres = token_centres(grid, image_size)  # (T, 2)
    stride = image_size / grid
    n, tokens = len(boxes), grid * grid
    k = max([len(b) for b in boxes] + [1])
    padded = torch.zeros(n, k, 4)
    padded_labels = torch.full((n, k), -1, dtype=torch.long)
    for i, (b, c) in enumerate(zip(boxes, labels)):
        padded[i, : len(b)] = b.float().reshape(-1, 4)
        padded_labels[i, : len(c)] = c.long()
    valid = padded_labels >= 0  # (n, k)
    x, y = centres[:, 0].view(1, 1, -1), centres[:, 1].view(1, 1, -1)
    x0, y0, x1, y1 = (padded[..., j : j + 1] for j in range(4))  # (n, k, 1)
    inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    central = ((x - cx).abs() <= center_radius * stride) & ((y - cy).abs() <= center_radius * stride)
    claims = inside & central & valid.unsqueeze(-1)  # (n, k, T)
    # a box that claims nothing takes the token nearest its centre
    nearest = ((x - cx) ** 2 + (y - cy) ** 2).argmin(dim=-1)  # (n, k)
    orphan = valid & ~claims.any(dim=-1)
    claims |= F.one_hot(nearest, tokens).bool() & orphan.unsqueeze(-1)
    # where boxes overlap, the smaller one wins
    area = ((x1 - x0) * (y1 - y0)).expand(n, k, tokens)
    area = torch.where(claims, area, torch.full_like(area, float("inf")))
    winner = area.argmin(dim=1)  # (n, T)
    positive = claims.any(dim=1)
    cls = torch.where(positive, padded_labels.gather(1, winner), torch.full_like(winner, -1))
    target = padded.gather(1, winner.unsqueeze(-1).expand(n, tokens, 4)) * positive.unsqueeze(-1)
    return cls, target


def decode_boxes(distances: Tensor, centres: Tensor, image_size: float) -> Tensor:
    """Normalised (l, t, r, b) at token ``centres`` -> xyxy pixels (coordinates ordered, not clipped)."""
    d = distances * image_size
    x0, x1 = centres[..., 0] - d[..., 0], centres[..., 0] + d[..., 2]
    y0, y1 = centres[..., 1] - d[..., 1], centres[..., 1] + d[..., 3]
    return torch.stack([torch.minimum(x0, x1), torch.minimum(y0, y1), torch.maximum(x0, x1), torch.maximum(y0, y1)], dim=-1)


def _box_distances(target: Tensor, centres: Tensor, image_size: float) -> Tensor:
    """xyxy target boxes -> (l, t, r, b) from ``centres``, normalised by image_size."""
    x, y = centres[..., 0], centres[..., 1]
    return torch.stack([x - target[..., 0], y - target[..., 1], target[..., 2] - x, target[..., 3] - y], dim=-1) / image_size


def init_detection_head(head: DetectionHead, generator: torch.Generator, positive_distances: Tensor) -> DetectionHead:
    """Small normal weights, every class at the prior probability (RetinaNet's bias), the box
    branch's bias at the mean of the positive tokens' true distances (m, 4), if any."""
    for layer in head.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.01, generator=generator)
            nn.init.zeros_(layer.bias)
    with torch.no_grad():
        head.cls.bias.fill_(-torch.log(torch.tensor((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)).item())
        if len(positive_distances):
            head.box.bias.copy_(positive_distances.mean(dim=0))
    return head


def detection_loss(logits: Tensor, pred: Tensor, cls: Tensor, one_hot: Tensor, distances: Tensor, target: Tensor,
                   centres: Tensor, image_size: float) -> Tensor:
    """The module docstring's loss for a batch of b images of T tokens: predicted ``logits``
    (b, T, C) and normalised distances ``pred`` (b, T, 4) against the assigned ``cls`` (b, T)
    (-1: background), its ``one_hot`` (b, T, C), the true ``distances`` (b, T, 4) and boxes
    ``target`` (b, T, 4) xyxy, the tokens sitting at ``centres`` (T, 2)."""
    positive = cls >= 0
    num_positive = max(1, int(positive.sum()))
    loss = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum") / num_positive
    if positive.any():
        pred_d, true_d = pred[positive], distances[positive]
        loss = loss + L1_WEIGHT * F.l1_loss(pred_d, true_d)
        c = centres.expand(len(cls), -1, -1)[positive]
        giou = generalized_box_iou_loss(decode_boxes(pred_d, c, image_size), target[positive], reduction="mean")
        loss = loss + GIOU_WEIGHT * giou
    return loss


@_one_thread()
def train_detection_head(
    tokens: Tensor, boxes: list[Tensor], labels: list[Tensor], image_size: int, num_classes: int,
    epochs: int = 30, lr: float = 1e-2, batch_size: int = 64, hidden: int = 64, center_radius: float = 1.0, seed: int = 0,
) -> tuple[DetectionHead, Tensor, Tensor]:
    """AdamW + cosine on standardised tokens (n, G, G, D) with per-image ``boxes`` (k, 4) xyxy and
    ``labels`` (k,); returns the head and the per-channel token mean/std it expects."""
    generator = torch.Generator().manual_seed(seed)
    tokens = _as_grid(tokens)
    n, grid = tokens.shape[0], tokens.shape[1]
    mean, std = tokens.mean(dim=(0, 1, 2)), tokens.std(dim=(0, 1, 2)).clamp_min(1e-6)
    x = ((tokens - mean) / std).flatten(1, 2)  # (n, T, D)
    cls, target = assign_targets(boxes, labels, grid, image_size, center_radius)
    centres = token_centres(grid, image_size)
    distances = _box_distances(target, centres, image_size)  # (n, T, 4), meaningful where cls >= 0
    one_hot = F.one_hot(cls.clamp_min(0), num_classes).float() * (cls >= 0).unsqueeze(-1)

    head = init_detection_head(DetectionHead(x.shape[-1], num_classes, hidden), generator, distances[cls >= 0])
    steps = max(1, epochs * -(-n // batch_size))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.enable_grad():
        for _ in range(epochs):
            for rows in torch.randperm(n, generator=generator).split(batch_size):
                logits, pred = head(x[rows])
                loss = detection_loss(logits, pred, cls[rows], one_hot[rows], distances[rows], target[rows], centres, image_size)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    return head.requires_grad_(False), mean, std


@torch.no_grad()
@_one_thread()
def detect(
    head: DetectionHead, mean: Tensor, std: Tensor, tokens: Tensor, image_size: int,
    score_threshold: float = 0.05, pre_nms_top: int = 100, iou_threshold: float = 0.6, max_detections: int = 20, batch_size: int = 256,
) -> list[dict]:
    """Per-image predictions {"boxes" (m, 4) xyxy pixels, "scores", "labels"} from tokens
    (n, G, G, D): each (token, class) scores its class probability; the ``pre_nms_top`` best above
    ``score_threshold`` are decoded, clipped to the image, put through class-wise NMS and cut to
    ``max_detections``."""
    tokens = _as_grid(tokens)
    grid = tokens.shape[1]
    centres = token_centres(grid, image_size)
    predictions = []
    for chunk in tokens.split(batch_size):
        logits, distances = head(((chunk - mean) / std).flatten(1, 2))
        predictions += decode_detections(logits, distances, centres, image_size, score_threshold, pre_nms_top, iou_threshold, max_detections)
    return predictions


def decode_detections(
    logits: Tensor, distances: Tensor, centres: Tensor, image_size: int,
    score_threshold: float = 0.05, pre_nms_top: int = 100, iou_threshold: float = 0.6, max_detections: int = 20,
) -> list[dict]:
    """Per-image predictions from a batch's class ``logits`` (b, T, C) and normalised
    ``distances`` (b, T, 4) at token ``centres`` (T, 2): the rule of `detect`."""
    probs = logits.sigmoid()  # (b, T, C)
    boxes = decode_boxes(distances, centres, image_size).clamp(0, image_size)
    num_classes = probs.shape[-1]
    predictions = []
    for p, b in zip(probs, boxes):
        scores, flat = p.flatten().topk(min(pre_nms_top, p.numel()))
        keep = scores > score_threshold
        scores, flat = scores[keep], flat[keep]
        token, label = flat // num_classes, flat % num_classes
        kept_boxes = b[token]
        keep = batched_nms(kept_boxes, scores, label, iou_threshold)[:max_detections]
        predictions.append({"boxes": kept_boxes[keep], "scores": scores[keep], "labels": label[keep]})
    return predictions


def detection_probe(
    train_tokens: Tensor, train_boxes: list[Tensor], train_labels: list[Tensor],
    test_tokens: Tensor, test_boxes: list[Tensor], test_labels: list[Tensor],
    image_size: int, num_classes: int, epochs: int = 30, lr: float = 1e-2, hidden: int = 64, seed: int = 0,
) -> dict:
    """Fit the head on the train tokens/boxes, detect on the test tokens and score them against
    the test boxes: ``detection_metrics`` plus ``n_train``, ``n_test`` and ``epochs``."""
    head, mean, std = train_detection_head(train_tokens, train_boxes, train_labels, image_size, num_classes, epochs=epochs, lr=lr, hidden=hidden, seed=seed)
    predictions = detect(head, mean, std, test_tokens, image_size)
    targets = [{"boxes": b, "labels": c} for b, c in zip(test_boxes, test_labels)]
    scores = detection_metrics(predictions, targets, num_classes)
    scores.update({"n_train": len(train_tokens), "n_test": len(test_tokens), "epochs": epochs})
    return scores


def item_lists(split: dict) -> tuple[list[Tensor], list[Tensor]]:
    """Per scene, its (k, 4) boxes and (k,) labels without the -1 padding."""
    keep = split["labels"] >= 0
    return [b[k] for b, k in zip(split["boxes"], keep)], [label[k] for label, k in zip(split["labels"], keep)]


@task("detection", headline="ap50", dataset="fashion-scenes-boxes")
def detection_task(ctx: EvalContext) -> dict[str, Any]:
    """A light dense head on the refined patch grid, trained on train scenes' boxes; COCO AP."""
    train, test = ctx.scene_features("train"), ctx.scene_features("test")
    scores = detection_probe(train["dense"], *item_lists(train), test["dense"], *item_lists(test), image_size=ctx.canvas,
                             num_classes=len(CLASS_NAMES), epochs=ctx.cfg.detection_epochs, seed=ctx.cfg.seed)
    per_class = scores.pop("ap50_per_class")
    sizes = {"train": scores.pop("n_train"), "test": scores.pop("n_test")}
    return {"metrics": scores, "details": {"ap50_per_class": dict(zip(CLASS_NAMES, per_class)), "refine": ctx.cfg.dense_refine,
                                           "epochs": scores["epochs"]}, "split_sizes": sizes}
