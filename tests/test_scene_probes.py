"""Scene probes and their features: metrics on hand-made inputs, planted features that a probe must
read perfectly, features that carry nothing (chance), and the refined patch grid."""
import pytest
import torch

from langmim.eval.linear import mean_average_precision
from langmim.eval.scene_features import cell_pooling_weights, dense_patch_tokens, shift_images, window_offsets
from langmim.eval.scene_probes import (
    binding_probe,
    binding_queries,
    cell_probe,
    cell_targets,
    counting_probe,
    presence_probe,
    presence_targets,
)

SHOTS, SEEDS = (1, 4), range(2)


def random_scenes(n: int, seed: int) -> dict:
    """n scenes of 1 to 3 items with distinct cells, random garments and colours (-1 padded)."""
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(1, 4, (n,), generator=g)
    slots = torch.arange(3)[None] < count[:, None]
    labels = torch.where(slots, torch.randint(0, 10, (n, 3), generator=g), -1)
    colours = torch.where(slots, torch.randint(0, 10, (n, 3), generator=g), -1)
    cells = torch.where(slots, torch.stack([torch.randperm(9, generator=g)[:3] for _ in range(n)]), -1)
    return {"labels": labels, "colours": colours, "cells": cells, "count": count}


def with_pooled(scenes: dict, features: torch.Tensor) -> dict:
    """Tokens whose patch mean and CLS are both ``features``."""
    return {**scenes, "tokens": torch.stack([features, features], dim=1)}


def test_average_precision_perfect_constant_and_by_hand():
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    assert mean_average_precision(targets.float(), targets)[0] == pytest.approx(100.0)
    mean_ap, per_class = mean_average_precision(torch.zeros(4, 2), targets)  # constant: AP = share of positives
    assert per_class == pytest.approx([50.0, 25.0]) and mean_ap == pytest.approx(37.5)
    # class 0 ranked: pos, neg, pos, neg -> precision 1 at recall .5, 2/3 at recall 1 -> AP 5/6
    scores = torch.tensor([[0.9, 0], [0.8, 1], [0.7, 0], [0.1, 0]])
    assert mean_average_precision(scores, targets)[1][0] == pytest.approx(100 * 5 / 6)
    assert mean_average_precision(torch.zeros(2, 2), torch.tensor([[1, 0], [1, 0]]))[1][1] is None  # no positive: no AP


def test_targets_from_padded_annotations():
    labels = torch.tensor([[3, 7, -1], [3, -1, -1]])
    cells = torch.tensor([[0, 8, -1], [4, -1, -1]])
    assert presence_targets(labels)[0].nonzero().flatten().tolist() == [3, 7]
    assert cell_targets(labels, cells).tolist() == [[4, 0, 0, 0, 0, 0, 0, 0, 8], [0, 0, 0, 0, 4, 0, 0, 0, 0]]
    colours = torch.tensor([[1, 2, -1], [5, -1, -1]])
    queries, answers = binding_queries(torch.ones(2, 4), labels, colours)
    # only the two-item scene asks; each query fills the named garment's block
    assert answers.tolist() == [1, 2] and queries.shape == (2, 40)
    assert queries[0, 12:16].tolist() == [1] * 4 and queries[0].sum() == 4 and queries[1, 28:32].sum() == 4
    same_garment = torch.tensor([[3, 3, -1]])
    assert len(binding_queries(torch.ones(1, 4), same_garment, torch.tensor([[1, 2, -1]]))[1]) == 0  # "the shirt" is ambiguous


def test_presence_reads_planted_features_perfectly_and_noise_at_chance():
    train, test = random_scenes(400, 0), random_scenes(300, 1)
    planted = presence_probe(with_pooled(train, presence_targets(train["labels"])), with_pooled(test, presence_targets(test["labels"])), SHOTS, SEEDS)
    assert planted["metrics"]["mean_map"] == pytest.approx(100.0) and planted["metrics"]["mean_lowshot_4"] > 95
    g = torch.Generator().manual_seed(2)
    noise = presence_probe(with_pooled(train, torch.randn(400, 16, generator=g)), with_pooled(test, torch.randn(300, 16, generator=g)), SHOTS, SEEDS)
    assert noise["metrics"]["mean_map"] < noise["metrics"]["chance_map"] + 10


def test_cell_probe_reads_planted_cells_and_constant_features_score_zero_on_occupied_cells():
    train, test = random_scenes(300, 0), random_scenes(200, 1)
    identity = torch.eye(9)  # one token per cell, so pooling is the identity

    def planted(split):
        onehot = torch.eye(11)[cell_targets(split["labels"], split["cells"])]  # (n, 9, 11)
        return {**split, "tokens": torch.cat([torch.zeros(len(onehot), 1, 11), onehot], dim=1)}

    result = cell_probe(planted(train), planted(test), identity, SHOTS, SEEDS)
    assert result["metrics"]["occupied_accuracy"] == pytest.approx(100.0) and result["metrics"]["accuracy"] == pytest.approx(100.0)
    constant = {**test, "tokens": torch.zeros(200, 10, 11)}
    flat = cell_probe({**train, "tokens": torch.zeros(300, 10, 11)}, constant, identity, SHOTS, SEEDS)
    assert flat["metrics"]["occupied_accuracy"] == 0.0  # always "nothing", the commonest answer
    assert flat["metrics"]["accuracy"] == pytest.approx(flat["metrics"]["empty_share"])


def test_binding_needs_bound_features_and_counting_reads_counts():
    train, test = random_scenes(600, 0), random_scenes(400, 1)

    def bound(split):  # garment x colour pairs: which item wears which colour
        f = torch.zeros(len(split["labels"]), 10, 10)
        for row, slot in (split["labels"] >= 0).nonzero().tolist():
            f[row, split["labels"][row, slot], split["colours"][row, slot]] = 1
        return with_pooled(split, f.flatten(1))

    def bag(split):  # which garments and which colours, unbound
        colours = presence_targets(split["colours"])
        return with_pooled(split, torch.cat([presence_targets(split["labels"]), colours], dim=1))

    assert binding_probe(bound(train), bound(test), SHOTS, SEEDS)["metrics"]["mean_top1"] == pytest.approx(100.0)
    unbound = binding_probe(bag(train), bag(test), SHOTS, SEEDS)["metrics"]["mean_top1"]
    assert 20 < unbound < 75  # can guess among the colours present, cannot bind them
    counted = counting_probe(with_pooled(train, torch.eye(3)[train["count"] - 1]), with_pooled(test, torch.eye(3)[test["count"] - 1]), SHOTS, SEEDS)
    assert counted["metrics"]["mean_top1"] == pytest.approx(100.0)
    constant = counting_probe(with_pooled(train, torch.zeros(600, 3)), with_pooled(test, torch.zeros(400, 3)), SHOTS, SEEDS)
    assert constant["metrics"]["mean_top1"] <= constant["details"]["chance"] + 1e-9


def test_cell_pooling_weights_cover_each_cell_square():
    weights = cell_pooling_weights(64, 16)
    assert weights.shape == (9, 16) and torch.allclose(weights.sum(dim=1), torch.ones(9))
    top_left = weights[0].reshape(4, 4)
    assert torch.allclose(top_left[:2, :2], torch.full((2, 2), 0.25)) and top_left[2:].sum() == 0 and top_left[:, 2:].sum() == 0
    centre = weights[4].reshape(4, 4)
    assert torch.allclose(centre[1:3, 1:3], torch.full((2, 2), 0.25))


def test_shift_images_moves_content_and_fills_black():
    image = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    shifted = shift_images(image, 1, -1)  # out(y, x) = in(y - 1, x + 1)
    assert shifted[0, 0, 1, :3].tolist() == [1, 2, 3] and shifted[0, 0, 0].sum() == 0 and shifted[0, 0, :, 3].sum() == 0
    assert torch.equal(shift_images(image, 0, 0), image)


def test_window_offsets_centre_the_refined_grid():
    assert window_offsets(16, 1) == [0]
    assert window_offsets(16, 2) == [-4, 4]
    assert window_offsets(16, 4) == [-6, -2, 2, 6]
    with pytest.raises(ValueError, match="refine=3"):
        window_offsets(16, 3)


class PatchMeans(torch.nn.Module):
    """A stand-in encoder whose patch token is the mean of its patch's pixels (the CLS token is 0)."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch, self.visual = patch, self
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        means = torch.nn.functional.avg_pool2d(images[:, :1], self.patch).flatten(2).transpose(1, 2)
        return torch.cat([torch.zeros(len(images), 1, 1), means], dim=1)


def test_dense_tokens_are_the_windows_centred_on_the_refined_grid():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    model, patch, refine = PatchMeans(8), 8, 2
    dense = dense_patch_tokens(model, images, patch, refine)
    assert dense.shape == (2, 8, 8, 1)
    padded = torch.nn.functional.pad(images[:, :1].float() / 255 * 2 - 1, (8, 8, 8, 8), value=-1.0)  # black border
    stride = patch // refine
    for i, j in ((0, 0), (3, 5), (7, 7), (4, 1)):
        cy, cx = (i + 0.5) * stride, (j + 0.5) * stride  # window centre in pixels
        y0, x0 = int(cy - patch / 2) + 8, int(cx - patch / 2) + 8
        expected = padded[:, 0, y0:y0 + patch, x0:x0 + patch].mean(dim=(1, 2))
        assert torch.allclose(dense[:, i, j, 0], expected, atol=1e-6)
    assert torch.allclose(dense_patch_tokens(model, images, patch, 1)[..., 0].flatten(1), model.forward_features(images.float() / 255 * 2 - 1)[:, 1:, 0])
