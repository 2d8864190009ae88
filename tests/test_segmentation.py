"""Segmentation probe: mIoU from hand-made masks, and a head that learns a planted layout."""
import pytest
import torch

from langmim.eval.segmentation import confusion_matrix, iou_scores, pixel_logits, train_segmentation_head


def test_miou_on_hand_made_masks():
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 1, 2]])
    scores = iou_scores(confusion_matrix(pred, target, num_classes=4))
    # class 0: TP 3, union 4 -> 0.75; class 1: TP 3, union 5 -> 0.6; class 2: TP 0, union 1 -> 0;
    # class 3 absent everywhere -> left out
    assert scores["per_class_iou"] == pytest.approx([75.0, 60.0, 0.0, None])
    assert scores["miou"] == pytest.approx((75 + 60 + 0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(100 * 6 / 8)


def test_perfect_prediction_scores_100():
    target = torch.randint(0, 3, (5, 8, 8))
    assert iou_scores(confusion_matrix(target, target, 3))["miou"] == pytest.approx(100.0)


def test_linear_head_learns_patch_classes():
    """Tokens that carry their patch's class give near-perfect masks after upsampling."""
    g = torch.Generator().manual_seed(0)
    n, grid, size, classes = 64, 4, 16, 3
    patch_classes = torch.randint(0, classes, (n, grid, grid), generator=g)
    tokens = torch.eye(classes)[patch_classes.flatten(1)] + 0.05 * torch.randn(n, grid * grid, classes, generator=g)
    masks = patch_classes.repeat_interleave(size // grid, 1).repeat_interleave(size // grid, 2)
    head, mean, std = train_segmentation_head(tokens, masks, classes, epochs=30, batch_size=16)
    pred = pixel_logits(head, (tokens - mean) / std, size).argmax(dim=1)
    # bilinear upsampling blurs patch borders: interiors must be right
    assert iou_scores(confusion_matrix(pred, masks, classes))["pixel_accuracy"] > 85


def test_where_and_what_split_of_the_probe():
    """Tokens that locate items but carry no garment: items are found, garments are at chance."""
    from langmim.eval.segmentation import segmentation_probe

    g = torch.Generator().manual_seed(0)
    n, grid = 120, 4
    item = torch.rand(n, grid, grid, generator=g) < 0.4
    garment = torch.randint(1, 5, (n, grid, grid), generator=g)
    masks = item * garment  # one pixel per token: no upsampling blur
    tokens = torch.stack([item.float(), torch.randn(n, grid, grid, generator=g)], dim=-1)  # where, not what
    scores = segmentation_probe(tokens[:80], masks[:80], tokens[80:], masks[80:], num_classes=5, epochs=30)
    assert scores["item_iou"] > 80
    assert scores["garment_accuracy_on_items"] < 45  # 4 garments: chance 25
