"""Evaluation protocols (k-NN, linear probe, zero-shot) on planted features with known answers."""

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor, nn

from langmim.eval import linear
from langmim.eval.knn import knn_classify
from langmim.eval.linear import accuracy, linear_probe, train_val_split
from langmim.eval.metrics import mean_per_class_recall, topk_accuracy
from langmim.eval.zeroshot import zeroshot_classifier, zeroshot_scores


def _clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Gaussian blobs around random class centres: (features, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 5
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(labels.numel(), dim, generator=g), labels


# ---------------------------------------------------------------- metrics


def test_topk_accuracy_hand_made():
    logits = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.9],  # label 3 ranked 1st
            [0.8, 0.1, 0.7, 0.0],  # label 2 ranked 2nd
            [0.3, 0.2, 0.1, 0.4],  # label 2 ranked 4th
        ]
    )
    labels = torch.tensor([3, 2, 2])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 3, 5))
    assert acc[1] == pytest.approx(100 / 3)
    assert acc[2] == pytest.approx(200 / 3)
    assert acc[3] == pytest.approx(200 / 3)
    assert acc[5] == pytest.approx(100.0)  # k clipped to the 4 classes
    assert accuracy(logits, labels) == pytest.approx(100 / 3)


def test_mean_per_class_recall_hand_made():
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    labels = torch.tensor([0, 1, 1, 1, 2, 2])
    # recalls: class 0 = 1/1, class 1 = 2/3, class 2 = 1/2; class 3 has no sample and is skipped
    expected = 100 * (1 + 2 / 3 + 1 / 2) / 3
    assert mean_per_class_recall(pred, labels, num_classes=4) == pytest.approx(expected)
    assert expected == pytest.approx(100 * balanced_accuracy_score(labels, pred))


# ---------------------------------------------------------------- k-NN


def test_knn_separated_clusters_are_perfect_for_every_k_and_chunking():
    train_x, train_y = _clusters(50, 2, 16, 0.1, seed=0)
    test_x, test_y = _clusters(20, 2, 16, 0.1, seed=0)  # same centres, fresh noise
    test_x = test_x + 0.05 * torch.randn_like(test_x)
    result = knn_classify(train_x, train_y, test_x, test_y)  # k = 200 > 100 train rows: clipped
    assert result == {f"top1_k{k}": 100.0 for k in (10, 20, 100, 200)}
    assert knn_classify(train_x, train_y, test_x, test_y, chunk_size=7) == result


def test_knn_vote_is_weighted_by_exp_similarity_over_temperature():
    # One class-0 neighbour at cosine 1.0, two class-1 neighbours at cosine 0.8.
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_y = torch.tensor([0, 1, 1])
    test_x, test_y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    # T = 0.07: exp(1/0.07) > 2 exp(0.8/0.07), so the single close neighbour outvotes the two.
    assert math.exp(1 / 0.07) > 2 * math.exp(0.8 / 0.07)
    assert knn_classify(train_x, train_y, test_x, test_y, ks=(3,)) == {"top1_k3": 100.0}
    # A huge temperature makes the weights equal: the unweighted majority (class 1) wins.
    flat = knn_classify(train_x, train_y, test_x, test_y, ks=(3, 10), temperature=1e4)
    assert flat == {"top1_k3": 0.0, "top1_k10": 0.0}
    # k = 1 only sees the nearest neighbour.
    nearest = knn_classify(train_x, train_y, test_x, test_y, ks=(1,), temperature=1e4)
    assert nearest == {"top1_k1": 100.0}


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_features_are_near_perfect():
    train_x, train_y = _clusters(100, 3, 32, 1.0, seed=1)
    test_x, test_y = _clusters(50, 3, 32, 1.0, seed=1)
    test_x = test_x + 0.1 * torch.randn_like(test_x)
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result["top1"] >= 99.0
    assert result["val_top1"] >= 99.0
    assert (result["n_train"], result["n_val"], result["n_test"]) == (240, 60, 150)
    assert result["best_weight_decay"] in result["sweep"] and len(result["sweep"]) == 8
    assert result["val_top1"] == max(result["sweep"].values())


def test_linear_probe_pure_noise_is_near_chance():
    g = torch.Generator().manual_seed(2)
    train_x, test_x = torch.randn(2, 1000, 32, generator=g)
    train_y, test_y = torch.randint(0, 10, (2, 1000), generator=g)
    assert 4.0 < linear_probe(train_x, train_y, test_x, test_y)["top1"] < 17.0


def test_train_val_split_is_disjoint_complete_and_seeded():
    fit, val = train_val_split(100, 0.2, seed=3)
    assert val.numel() == 20 and fit.numel() == 80
    assert set(fit.tolist()).isdisjoint(val.tolist())
    assert sorted(fit.tolist() + val.tolist()) == list(range(100))
    again = train_val_split(100, 0.2, seed=3)
    assert torch.equal(fit, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, train_val_split(100, 0.2, seed=4)[1])


def test_linear_probe_sweep_never_sees_test_rows(monkeypatch):
    g = torch.Generator().manual_seed(5)
    train_x = torch.randn(200, 8, generator=g)
    train_y = (train_x[:, 0] + 0.8 * torch.randn(200, generator=g) > 0).long()
    test_y = torch.randint(0, 2, (50,), generator=g)
    fit_rows = []
    real_fit = linear.fit_logistic_regression

    def recording_fit(features: Tensor, *args, **kwargs) -> nn.Linear:
        fit_rows.append(features.shape[0])
        return real_fit(features, *args, **kwargs)

    monkeypatch.setattr(linear, "fit_logistic_regression", recording_fit)
    wds = (1e-4, 1e-2, 1.0, 1e2)
    first = linear_probe(train_x, train_y, torch.randn(50, 8, generator=g), test_y, wds)
    # The sweep fits only the 160 rows left after carving 40 validation rows; the refit uses all.
    assert fit_rows == [160] * len(wds) + [200]
    other = linear_probe(train_x, train_y, 100 * torch.randn(50, 8, generator=g), test_y, wds)
    assert other["sweep"] == first["sweep"]
    assert other["best_weight_decay"] == first["best_weight_decay"]
    reseeded = linear_probe(train_x, train_y, torch.randn(50, 8, generator=g), test_y, wds, seed=1)
    assert reseeded["n_val"] == first["n_val"] == 40


# ---------------------------------------------------------------- zero-shot


class FakeTextModel(nn.Module):
    """Tokenises a text to (class-word id, template-word id); embeds as the sum of the two."""

    def __init__(self, class_emb: Tensor, words: list[str], template_emb: dict[str, Tensor]):
        super().__init__()
        self.words = words
        self.template_words = list(template_emb)
        self.class_emb = nn.Parameter(class_emb)
        self.template_emb = nn.Parameter(torch.stack(list(template_emb.values())))
        self.modes_seen: list[bool] = []

    def tokenizer(self, texts: list[str]) -> Tensor:
        def ids(text: str) -> list[int]:
            tokens = text.split()
            class_id = next(self.words.index(t) for t in tokens if t in self.words)
            template_id = next(i for i, w in enumerate(self.template_words) if w in tokens)
            return [class_id, template_id]

        return torch.tensor([ids(t) for t in texts], dtype=torch.long)

    def encode_text(self, tokens: Tensor) -> Tensor:
        self.modes_seen.append(self.training)
        return self.class_emb[tokens[:, 0]] + self.template_emb[tokens[:, 1]]


WORDS = ["cat", "dog", "car", "ship", "tree", "bird"]


def _planted_model(seed: int = 0) -> FakeTextModel:
    g = torch.Generator().manual_seed(seed)
    class_emb = torch.linalg.qr(torch.randn(16, len(WORDS), generator=g))[0].T  # orthonormal rows
    return FakeTextModel(class_emb, WORDS, {"photo": torch.zeros(16)})


def test_zeroshot_planted_embeddings_are_perfect_and_permutation_follows():
    model = _planted_model().train()
    classifier = zeroshot_classifier(model, WORDS, ["a photo of a {}"])
    assert classifier.shape == (16, len(WORDS))
    assert model.modes_seen and not any(model.modes_seen)  # encoded in eval mode
    assert model.training  # previous mode restored
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(len(WORDS)).repeat(10)
    class_emb = model.class_emb.detach()
    images = 3 * class_emb[labels] + 0.01 * torch.randn(labels.numel(), 16, generator=g)
    assert zeroshot_scores(images, labels, classifier) == {
        "top1": 100.0,
        "top5": 100.0,
        "mean_per_class_recall": 100.0,
    }
    perm = torch.tensor([1, 2, 3, 4, 5, 0])  # no fixed point
    permuted_images = class_emb[perm[labels]] + 0.01 * torch.randn(labels.numel(), 16, generator=g)
    assert zeroshot_scores(permuted_images, perm[labels], classifier)["top1"] == 100.0
    assert zeroshot_scores(permuted_images, labels, classifier)["top1"] == 0.0


def test_zeroshot_classifier_averages_normalised_template_embeddings():
    g = torch.Generator().manual_seed(2)
    class_emb = torch.randn(len(WORDS), 8, generator=g)
    templates = {"photo": torch.randn(8, generator=g), "sketch": 4 * torch.randn(8, generator=g)}
    model = FakeTextModel(class_emb, WORDS, templates)
    fill = lambda template, name: template.replace("CLS", name)  # noqa: E731
    classifier = zeroshot_classifier(model, WORDS, ["a photo of CLS", "a CLS sketch"], fill=fill)
    for c in range(len(WORDS)):
        a = F.normalize(class_emb[c] + templates["photo"], dim=0)
        b = F.normalize(class_emb[c] + templates["sketch"], dim=0)
        expected = F.normalize((a + b) / 2, dim=0)
        torch.testing.assert_close(classifier[:, c], expected)
        # the unnormalised mean would point elsewhere: the per-template normalisation matters
        naive = F.normalize(2 * class_emb[c] + templates["photo"] + templates["sketch"], dim=0)
        assert not torch.allclose(classifier[:, c], naive, atol=1e-3)



def test_knn_small_temperature_does_not_overflow():
    # exp(1 / 1e-3) overflows float32: unshifted weights would tie at inf and pick class 0.
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_y = torch.tensor([1, 0, 0])
    test_x, test_y = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    result = knn_classify(train_x, train_y, test_x, test_y, ks=(3,), temperature=1e-3)
    assert result == {"top1_k3": 100.0}
