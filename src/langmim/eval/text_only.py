"""A text-only control for caption-ranking tasks: how much of a benchmark the captions alone solve.

A benchmark of hard negatives can leak its answer through the text (SugarCrepe, arXiv 2306.14610:
ARO's and CREPE's negatives are often ungrammatical or implausible, and a blind model beats CLIP).
The control never sees an image: a linear scorer of caption features (bag of word unigrams and
bigrams over the training captions' vocabulary, and the length in words and in characters) is
fitted as a pairwise logistic regression on the task's training pairs, then ranks each test
pair's captions by the same rule the models are held to (`compositional_accuracy`). A kind of
negative where it lands well above chance is solvable from the text alone.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.compositional import KINDS, CompositionalScenes
from .metrics import compositional_accuracy

Group = tuple[str, Sequence[str]]  # (true caption, its negatives)

TOKEN = re.compile(r"[\w'-]+|[^\w\s]")  # words (with "t-shirt", "don't") and single punctuation marks
L2 = 1e-3  # the scorer's L2 penalty: enough to keep separable data finite, small beside the data's loss
SOLVABLE_MARGIN = 5.0  # points above chance beyond which a kind counts as solvable from the text alone


def ngrams(caption: str) -> list[str]:
    """The caption's lower-cased tokens and its bigrams of adjacent tokens."""
    tokens = TOKEN.findall(caption.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def _lengths(captions: Sequence[str]) -> Tensor:
    """(n, 2): length in words and in characters."""
    return torch.tensor([[len(c.split()), len(c)] for c in captions], dtype=torch.float64)


@dataclass(frozen=True)
class TextFeatures:
    """Caption features: n-gram counts over a vocabulary of training captions (unseen n-grams are
    dropped), then the lengths divided by their spread over the training captions, so that every
    column is of order one for the optimiser and the penalty."""

    vocabulary: dict[str, int]
    length_scale: Tensor  # (2,)

    @classmethod
    def fit(cls, captions: Iterable[str]) -> TextFeatures:
        captions = list(dict.fromkeys(captions))
        vocabulary = sorted({gram for caption in captions for gram in ngrams(caption)})
        scale = _lengths(captions).std(dim=0, correction=0) if len(captions) > 1 else torch.ones(2, dtype=torch.float64)
        return cls({gram: i for i, gram in enumerate(vocabulary)}, torch.where(scale > 0, scale, 1.0))

    def __call__(self, captions: Sequence[str]) -> Tensor:
        """(n, len(vocabulary) + 2) float64 features."""
        cells = [(row, self.vocabulary[gram]) for row, caption in enumerate(captions) for gram in ngrams(caption) if gram in self.vocabulary]
        counts = torch.zeros(len(captions), len(self.vocabulary), dtype=torch.float64)
        counts.index_put_(tuple(torch.tensor(cells, dtype=torch.long).reshape(-1, 2).T), torch.ones(len(cells), dtype=torch.float64),
                          accumulate=True)
        return torch.cat([counts, _lengths(captions) / self.length_scale], dim=1)


def _pair_differences(features: TextFeatures, groups: Sequence[Group]) -> Tensor:
    """features(true) - features(negative), one row per (true caption, negative) pair."""
    trues = [true for true, negatives in groups for _ in negatives]
    return features(trues) - features([n for _, negatives in groups for n in negatives])


def fit_pairwise_scorer(features: TextFeatures, groups: Sequence[Group], l2: float = L2) -> Tensor:
    """Weights w of the score w . features(caption), fitted as a logistic regression of
    features(true) - features(negative) -> 1 and the reverse -> 0 (no bias: swapping a pair flips
    its label), by full-batch L-BFGS from zero with an L2 penalty; deterministic."""
    differences = _pair_differences(features, groups)
    inputs = torch.cat([differences, -differences])
    targets = torch.cat([torch.ones(len(differences)), torch.zeros(len(differences))]).double()
    weights = torch.zeros(inputs.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimiser.zero_grad()
        value = F.binary_cross_entropy_with_logits(inputs @ weights, targets) + l2 / 2 * weights.square().sum()
        value.backward()
        return value

    optimiser.step(loss)
    return weights.detach()


def text_only_accuracy(train_groups: Sequence[Group], test_groups: Sequence[Group]) -> tuple[float, float]:
    """(accuracy %, chance %) of the blind scorer fitted on `train_groups` and ranking the
    captions of `test_groups`: a group is solved when its true caption scores strictly higher
    than each of its negatives (`compositional_accuracy`)."""
    if not train_groups or any(not negatives for _, negatives in train_groups):
        raise ValueError("text_only_accuracy needs at least one training group, each with a negative")
    features = TextFeatures.fit(c for true, negatives in train_groups for c in (true, *negatives))
    weights = fit_pairwise_scorer(features, train_groups)
    texts = list(dict.fromkeys(c for true, negatives in test_groups for c in (true, *negatives)))
    score = dict(zip(texts, features(texts) @ weights))
    return compositional_accuracy(torch.stack([score[true] for true, _ in test_groups]),
                                  [torch.stack([score[n] for n in negatives]) for _, negatives in test_groups])


def text_only_by_kind(train: Mapping[str, Sequence[Group]], test: Mapping[str, Sequence[Group]]) -> dict[str, tuple[float, float]]:
    """`text_only_accuracy` per kind of negative, one scorer per kind, for the kinds with both
    training and test groups."""
    return {kind: text_only_accuracy(train[kind], test[kind]) for kind in test if test[kind] and train.get(kind)}


def caption_groups(scenes: CompositionalScenes) -> dict[str, list[Group]]:
    """Per kind of KINDS, the (true caption, negatives) group of every scene that has negatives of that kind."""
    groups: dict[str, list[Group]] = {kind: [] for kind in KINDS}
    for i in range(len(scenes)):
        sample = scenes[i]
        for kind in KINDS:
            if sample["negatives"][kind]:
                groups[kind].append((sample["caption"], sample["negatives"][kind]))
    return groups


def text_only_control(train: CompositionalScenes, test: CompositionalScenes) -> dict:
    """The compositional task's blind control: metrics "text_only_<kind>_acc" and their mean
    "text_only_mean_acc"; details "text_solvable_kinds" (the kinds it solves more than
    SOLVABLE_MARGIN points above chance) and "text_only_train_groups" (training groups per kind)."""
    train_groups = caption_groups(train)
    accuracy = text_only_by_kind(train_groups, caption_groups(test))
    metrics = {f"text_only_{kind}_acc": acc for kind, (acc, _) in accuracy.items()}
    metrics["text_only_mean_acc"] = sum(metrics.values()) / len(metrics)
    solvable = [kind for kind, (acc, chance) in accuracy.items() if acc - chance > SOLVABLE_MARGIN]
    return {"metrics": metrics, "details": {"text_solvable_kinds": solvable,
                                            "text_only_train_groups": {kind: len(g) for kind, g in train_groups.items()}}}
