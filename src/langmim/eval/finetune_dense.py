"""Dense fine-tuning tasks: segmentation and detection with the whole encoder trained.

A copy of the vision tower is trained end to end with a light head on its patch tokens, under
the fine-tuning recipe of `finetune` (AdamW, layer-wise lr decay from `finetune.model`'s
``layer_decay_groups``, stochastic depth, linear warm-up then cosine, horizontal flips), on the
evaluation scenes of train-split items; it is scored on the scenes of test-split items with the
frozen probes' metrics (`segmentation.segmentation_scores`: mIoU; `detection.detection_metrics`:
COCO AP) and, for detection, the frozen probe's targets, loss and decoding. The checkpoint's own
weights are never touched.

What the heads read. The demo's 16 px patches leave a 4x4 token grid on a 64 px scene. The frozen
probes refine it by shifted passes (`scene_features`), which costs ``refine**2`` forwards per
image; a fine-tuned encoder can instead learn to put sub-patch detail into its tokens, and a
learnt upsampling can read it out. So the heads read one forward's final-norm patch tokens
through one level of a simple feature pyramid (ViTDet's, cut to the level a task uses):
transposed 2x2 convolutions of stride 2 (one for 2x, two with LayerNorm + GELU between for 4x),
then a 1x1 and a 3x3 convolution to ``PYRAMID_CHANNELS``, each followed by a channel LayerNorm.
Each task reads the level of a fixed stride in pixels, whatever the patch size, so that encoders
of both built-in worlds are read on the same grids: segmentation at 4 px (the 4x level of the
demo's 16 px patches, the 2x level of the web encoder's 8 px ones: 16x16 cells on a 64 px scene,
upsampled bilinearly to pixels) through the frozen probe's linear per-cell head; detection at 8 px
(2x on the demo, 1x at 8 px patches: the 8x8 grid the frozen probe sees, so its centre-sampling
assignment applies unchanged) through the frozen probe's 2-layer per-cell head. The pyramid is the
only part that is new; it holds 45k (1x), 74k (2x) or 80k (4x) weights against the encoders' 1.29M.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ..data.fashion_mnist import CLASS_NAMES
from ..engine.optim import lr_factor
from ..finetune.model import add_drop_path, layer_decay_groups
from ..models.vit import MaskedVisionTransformer
from ..transforms import to_float
from .detection import (
    DetectionHead,
    _box_distances,
    assign_targets,
    decode_detections,
    detection_loss,
    detection_metrics,
    init_detection_head,
    item_lists,
    token_centres,
)
from .finetune import scene_images
from .registry import task
from .scene_features import scene_annotations
from .segmentation import SegmentationHead, pixel_logits, segmentation_scores

if TYPE_CHECKING:
    from .context import EvalContext

PYRAMID_CHANNELS = 64
SEGMENTATION_STRIDE, DETECTION_STRIDE = 4, 8  # pixels per cell of the pyramid level each task reads
PYRAMID_SCALES = (1, 2, 4)


def pyramid_scale(patch_size: int, stride: int) -> int:
    """The pyramid level (an upsampling of the token grid) nearest ``stride`` pixels per cell
    without going finer: ``patch_size / stride``, or the largest scale the pyramid has below it."""
    return max(s for s in PYRAMID_SCALES if s <= max(1, patch_size // stride))


class SimpleFeaturePyramid(nn.Module):
    """One level of ViTDet's simple feature pyramid: the (D, G, G) token map upsampled ``scale``
    times (1, 2 or 4) by stride-2 transposed convolutions, then projected to ``channels``."""

    def __init__(self, dim: int, channels: int, scale: int) -> None:
        super().__init__()
        if scale == 4:
            up: list[nn.Module] = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                                   nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)]
            width = dim // 4
        elif scale == 2:
            up, width = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
        elif scale == 1:
            up, width = [], dim
        else:
            raise ValueError(f"pyramid scale must be 1, 2 or 4, got {scale}")
        self.layers = nn.Sequential(*up, nn.Conv2d(width, channels, 1, bias=False), LayerNorm2d(channels),
                                    nn.Conv2d(channels, channels, 3, padding=1, bias=False), LayerNorm2d(channels))

    def forward(self, grid: Tensor) -> Tensor:
        return self.layers(grid)


class DenseFineTuner(nn.Module):
    """A copy of the vision tower (with stochastic depth) -> a pyramid level -> ``head``, which
    reads the level's cells as row-major tokens (n, (G * scale)**2, channels)."""

    def __init__(self, visual: MaskedVisionTransformer, head: nn.Module, scale: int, drop_path: float,
                 channels: int = PYRAMID_CHANNELS) -> None:
        super().__init__()
        self.visual = copy.deepcopy(visual)
        add_drop_path(self.visual, drop_path)
        self.pyramid = SimpleFeaturePyramid(self.visual.width, channels, scale)
        self.head = head

    def tokens(self, images: Tensor) -> Tensor:
        """Float images (n, 3, H, W) -> the pyramid level's cells (n, (G * scale)**2, channels)."""
        patches = self.visual.forward_features(images)[:, 1:]
        grid = math.isqrt(patches.shape[1])
        level = self.pyramid(patches.transpose(1, 2).reshape(len(patches), -1, grid, grid))
        return level.flatten(2).transpose(1, 2)

    def forward(self, images: Tensor) -> Any:
        return self.head(self.tokens(images))


def train_dense(model: DenseFineTuner, n: int, batch_loss: Callable[[Tensor, Tensor], Tensor], *, steps: int, batch_size: int,
                lr: float, layer_decay: float, weight_decay: float = 0.05, warmup_fraction: float = 0.1, seed: int = 0) -> float:
    """``steps`` AdamW steps on batches of rows of ``n`` examples (seeded epochs, the last short
    batch of each dropped): ``batch_loss(rows, flip)`` gives the loss of the rows, ``flip``
    (b,) bool marking those to mirror. Returns the last step's loss; the model is left in eval mode."""
    optimizer = torch.optim.AdamW(layer_decay_groups(model, weight_decay, layer_decay), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch_size, n)
    warmup = max(1, int(warmup_fraction * steps))
    order = torch.empty(0, dtype=torch.long)
    loss = torch.tensor(float("nan"))
    model.train()
    for step in range(steps):
        if len(order) < batch:
            order = torch.randperm(n, generator=generator)
        rows, order = order[:batch], order[batch:]
        flip = torch.rand(batch, generator=generator) < 0.5
        factor = lr_factor(step, warmup, steps, min_ratio=0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor * group["lr_scale"]
        loss = batch_loss(rows, flip)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def flip_boxes(boxes: list[Tensor], width: int) -> list[Tensor]:
    """xyxy boxes of the horizontally mirrored images."""
    return [torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1) if len(b) else b for b in boxes]


def _mirror(images: Tensor, flip: Tensor) -> Tensor:
    """Images (or masks) mirrored left-right where ``flip`` (b,) is set."""
    return torch.where(flip.view(-1, *[1] * (images.ndim - 1)), images.flip(-1), images)


def _settings(ctx: EvalContext, steps: int) -> dict[str, Any]:
    cfg = ctx.cfg
    return {"steps": steps, "batch_size": cfg.finetune_dense_batch_size, "lr": cfg.finetune_lr,
            "layer_decay": cfg.finetune_layer_decay, "drop_path": cfg.finetune_drop_path}


def _scene_data(ctx: EvalContext, split: str) -> tuple[Tensor, dict[str, Tensor]]:
    """A split's scene images and annotations, kept for the evaluation (the annotations shared with the frozen probes)."""
    scenes = ctx.scenes(split)
    images = ctx.cache.remember(f"scene-images|{split}|{len(scenes)}", lambda: scene_images(scenes, ctx.cfg.batch_size))
    return images, ctx.cache.remember(f"annotations|{split}", lambda: scene_annotations(scenes))


def finetune_segmentation(visual: MaskedVisionTransformer, train_images: Tensor, train_masks: Tensor, test_images: Tensor,
                          test_masks: Tensor, num_classes: int, *, steps: int, batch_size: int, lr: float, layer_decay: float,
                          drop_path: float, seed: int = 0, eval_batch_size: int = 256) -> dict:
    """Fine-tune a copy of ``visual`` with the 4 px pyramid level and a linear per-cell head on
    uint8 scene images and pixel masks (per-pixel cross-entropy on the bilinearly upsampled
    logits); `segmentation_scores` on the test scenes."""
    torch.manual_seed(seed)
    device = next(visual.parameters()).device
    head = SegmentationHead(PYRAMID_CHANNELS, num_classes)
    model = DenseFineTuner(visual, head, pyramid_scale(visual.patch_size, SEGMENTATION_STRIDE), drop_path).to(device)
    size = train_masks.shape[-1]

    def batch_loss(rows: Tensor, flip: Tensor) -> Tensor:
        flip = flip.to(device)
        images = _mirror(to_float(train_images[rows].to(device)), flip)
        masks = _mirror(train_masks[rows].to(device).long(), flip)
        return F.cross_entropy(pixel_logits(model.head, model.tokens(images), size), masks)

    final_loss = train_dense(model, len(train_images), batch_loss, steps=steps, batch_size=batch_size, lr=lr,
                             layer_decay=layer_decay, seed=seed)
    with torch.no_grad():
        batches = ((pixel_logits(model.head, model.tokens(to_float(test_images[rows].to(device))), size).cpu(), test_masks[rows])
                   for rows in torch.arange(len(test_images)).split(eval_batch_size))
        scores = segmentation_scores(batches, num_classes, num_examples=0)
    scores.pop("example_predictions")
    scores["final_loss"] = final_loss
    return scores


def finetune_detection(visual: MaskedVisionTransformer, train_images: Tensor, train_boxes: list[Tensor], train_labels: list[Tensor],
                       test_images: Tensor, test_boxes: list[Tensor], test_labels: list[Tensor], num_classes: int, *, steps: int,
                       batch_size: int, lr: float, layer_decay: float, drop_path: float, hidden: int = 64, seed: int = 0,
                       eval_batch_size: int = 256) -> dict:
    """Fine-tune a copy of ``visual`` with the 8 px pyramid level and the frozen probe's per-cell
    head, targets and loss (`detection`) on uint8 scene images and their xyxy boxes and labels;
    `detection_metrics` of the decoded test detections."""
    torch.manual_seed(seed)
    device = next(visual.parameters()).device
    size = train_images.shape[-1]
    scale = pyramid_scale(visual.patch_size, DETECTION_STRIDE)
    grid = size // visual.patch_size * scale
    centres = token_centres(grid, size)
    targets = []  # per flip (no, yes): class (n, T), box (n, T, 4), distances (n, T, 4), one-hot (n, T, C)
    for boxes in (train_boxes, flip_boxes(train_boxes, size)):
        cls, box = assign_targets(boxes, train_labels, grid, size)
        one_hot = F.one_hot(cls.clamp_min(0), num_classes).float() * (cls >= 0).unsqueeze(-1)
        targets.append((cls, box, _box_distances(box, centres, size), one_hot))
    cls0, _, distances0, _ = targets[0]
    head = init_detection_head(DetectionHead(PYRAMID_CHANNELS, num_classes, hidden), torch.Generator().manual_seed(seed),
                               distances0[cls0 >= 0])
    model = DenseFineTuner(visual, head, scale, drop_path).to(device)
    centres = centres.to(device)

    def batch_loss(rows: Tensor, flip: Tensor) -> Tensor:
        images = _mirror(to_float(train_images[rows].to(device)), flip.to(device))
        picked = [torch.where(flip.view(-1, *[1] * (plain.ndim - 1)), mirrored[rows], plain[rows]).to(device)
                  for plain, mirrored in zip(*targets)]
        cls, box, distances, one_hot = picked
        logits, pred = model(images)
        return detection_loss(logits, pred, cls, one_hot, distances, box, centres, size)

    final_loss = train_dense(model, len(train_images), batch_loss, steps=steps, batch_size=batch_size, lr=lr,
                             layer_decay=layer_decay, seed=seed)
    predictions = []
    with torch.no_grad():
        for rows in torch.arange(len(test_images)).split(eval_batch_size):
            logits, distances = model(to_float(test_images[rows].to(device)))
            predictions += decode_detections(logits.float().cpu(), distances.float().cpu(), centres.cpu(), size)
    scores = detection_metrics(predictions, [{"boxes": b, "labels": c} for b, c in zip(test_boxes, test_labels)], num_classes)
    scores["final_loss"] = final_loss
    return scores


@task("finetune_segmentation", headline="miou", dataset="fashion-scenes-masks")
def finetune_segmentation_task(ctx: EvalContext) -> dict[str, Any]:
    """The encoder fine-tuned with a pyramid level and a linear head on train scenes' masks; mIoU on test scenes."""
    (train_images, train), (test_images, test) = _scene_data(ctx, "train"), _scene_data(ctx, "test")
    settings = _settings(ctx, ctx.cfg.finetune_segmentation_steps)
    scores = finetune_segmentation(ctx.model.visual, train_images, train["mask"], test_images, test["mask"], 1 + len(CLASS_NAMES),
                                   seed=ctx.cfg.seed, eval_batch_size=ctx.cfg.batch_size, **settings)
    per_class = scores.pop("per_class_iou")
    metrics = {key: scores[key] for key in ("miou", "foreground_miou", "pixel_accuracy", "item_iou", "garment_accuracy_on_items")}
    return {"metrics": metrics,
            "details": {**settings, "per_class_iou": dict(zip(["background", *CLASS_NAMES], per_class)),
                        "pyramid_scale": pyramid_scale(ctx.model.visual.patch_size, SEGMENTATION_STRIDE), "final_loss": scores["final_loss"]},
            "split_sizes": {"train": len(train_images), "test": len(test_images)}}


@task("finetune_detection", headline="ap50", dataset="fashion-scenes-boxes")
def finetune_detection_task(ctx: EvalContext) -> dict[str, Any]:
    """The encoder fine-tuned with a pyramid level and the probe's dense head on train scenes' boxes; COCO AP on test scenes."""
    (train_images, train), (test_images, test) = _scene_data(ctx, "train"), _scene_data(ctx, "test")
    settings = _settings(ctx, ctx.cfg.finetune_detection_steps)
    scores = finetune_detection(ctx.model.visual, train_images, *item_lists(train), test_images, *item_lists(test), len(CLASS_NAMES),
                                seed=ctx.cfg.seed, eval_batch_size=ctx.cfg.batch_size, **settings)
    per_class = scores.pop("ap50_per_class")
    final_loss = scores.pop("final_loss")
    return {"metrics": scores,
            "details": {**settings, "ap50_per_class": dict(zip(CLASS_NAMES, per_class)),
                        "pyramid_scale": pyramid_scale(ctx.model.visual.patch_size, DETECTION_STRIDE), "final_loss": final_loss},
            "split_sizes": {"train": len(train_images), "test": len(test_images)}}
