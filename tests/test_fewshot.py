"""Few-shot sampling and classifiers on planted features."""
import pytest
import torch

from langmim.eval.fewshot import fewshot_evaluate, sample_shots


def planted(n_per_class: int, classes: int = 4, dim: int = 8, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_sampling_takes_exactly_n_per_class_from_train_only(n):
    _, labels = planted(20)
    rows = sample_shots(labels, n, seed=3)
    assert torch.bincount(labels[rows]).tolist() == [n] * 4
    assert rows.unique().numel() == rows.numel() and rows.max() < len(labels)
    assert torch.equal(rows, sample_shots(labels, n, seed=3))
    assert not torch.equal(sample_shots(labels, 16, seed=3), sample_shots(labels, 16, seed=4))


def test_sampling_refuses_too_few_rows():
    with pytest.raises(ValueError, match="fewer than n=16"):
        sample_shots(torch.tensor([0, 0, 1]), 16, seed=0)


def test_separable_features_score_100_and_random_ones_chance():
    train_x, train_y = planted(20)
    test_x, test_y = planted(50, seed=1)
    results = fewshot_evaluate(train_x, train_y, test_x, test_y, shots=(1, 4), seeds=(0, 1, 2, 3, 4))
    for n in ("1", "4"):
        for name in ("prototype", "logistic"):
            assert results[n][name]["mean"] == pytest.approx(100.0)
            assert len(results[n][name]["runs"]) == 5

    noise_train = torch.randn(400, 8, generator=torch.Generator().manual_seed(5))
    noise_test = torch.randn(2000, 8, generator=torch.Generator().manual_seed(6))
    labels_train, labels_test = torch.arange(4).repeat(100), torch.arange(4).repeat(500)
    chance = fewshot_evaluate(noise_train, labels_train, noise_test, labels_test, shots=(4,))
    assert 15 < chance["4"]["prototype"]["mean"] < 35 and chance["4"]["prototype"]["std"] > 0


def test_a_shot_count_no_class_can_supply_is_left_out():
    train_x, train_y = planted(20)
    small = torch.cat([(train_y == c).nonzero().flatten()[:3] for c in range(4)])  # 3 rows per class
    results = fewshot_evaluate(train_x[small], train_y[small], *planted(10, seed=1), shots=(1, 2, 4, 16), seeds=(0,))
    assert set(results) == {"1", "2"}
