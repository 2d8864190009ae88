"""The compositional benchmark: canonical captions, hard negatives that change one thing, and the scoring."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from langmim.data.compositional import KINDS, CompositionalScenes, describe, hard_negatives
from langmim.data.fashion_mnist import CLASS_NAMES
from langmim.data.scenes import COLOURS, POSITIONS, FashionScenes
from langmim.eval.compositional import compositional_scores
from langmim.eval.metrics import compositional_accuracy
from langmim.transforms import to_float

# The first position phrase of each cell, written out here so that the test does not read it from the code under test.
PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


ITEM = re.compile(rf"an? (small|large) ({_alternatives(COLOURS)}) ({_alternatives(CLASS_NAMES)}) ({_alternatives(PHRASES.values())})")


def parse(caption: str) -> tuple[list[tuple[str, str, int, str]], str]:
    """Items (size, colour, class, position) in order and the word joining the first two ("and" if none)."""
    assert caption.startswith("a photo of ") and caption.endswith(".")
    matches = list(ITEM.finditer(caption))
    position_of = {phrase: name for name, phrase in PHRASES.items()}
    items = [(m[1], m[2], CLASS_NAMES.index(m[3]), position_of[m[4]]) for m in matches]
    assert re.fullmatch(r"a photo of #((,| and|, and| above| below| next to| to the left of| to the right of) #)*\.", ITEM.sub("#", caption)), caption
    relation = caption[matches[0].end():matches[1].start()].strip(" ,") if len(matches) > 1 else ""
    return items, relation or "and"


def true_relations(a: str, b: str) -> set[str]:
    """Words true of the item in cell a relative to the item in cell b, from the grid geometry."""
    (ra, ca), (rb, cb) = divmod(POSITIONS.index(a), 3), divmod(POSITIONS.index(b), 3)
    words = {"and"}
    words |= {"above"} if ra < rb else {"below"} if ra > rb else set()
    words |= {"to the left of"} if ca < cb else {"to the right of"} if ca > cb else set()
    words |= {"next to"} if ra == rb and abs(ca - cb) == 1 else set()
    return words


@pytest.fixture(scope="module")
def scenes() -> FashionScenes:
    return FashionScenes("test", 64, seed=1, length=50)


@pytest.fixture(scope="module")
def bench(scenes) -> CompositionalScenes:
    return CompositionalScenes(scenes, seed=0)


def test_describe_writes_the_canonical_caption():
    args = ([7, 8], ["red", "blue"], ["small", "large"], ["top left", "right"])
    assert describe(*args) == "a photo of a small red sneaker in the top left and a large blue bag on the right."
    assert describe(*args, relation="to the left of") == "a photo of a small red sneaker in the top left to the left of a large blue bag on the right."
    three = ([9, 0, 5], ["orange", "white", "grey"], ["large", "small", "small"], ["top", "bottom", "centre"])
    assert describe(*three, relation="above") == ("a photo of a large orange ankle boot at the top above a small white t-shirt at the bottom, "
                                                  "and a small grey sandal in the centre.")
    assert describe(*three) == ("a photo of a large orange ankle boot at the top, a small white t-shirt at the bottom "
                                "and a small grey sandal in the centre.")


def test_the_truth_describes_every_item_and_a_true_relation(scenes, bench):
    relations = Counter()
    for i in range(len(scenes)):
        scene, caption = scenes[i], bench[i]["caption"]
        items, relation = parse(caption)
        expected = list(zip(scene["sizes"], scene["colours"], scene["labels"].tolist(), scene["positions"]))
        assert items == expected, caption
        for size, colour, label, position in expected:
            assert f"{size} {colour} {CLASS_NAMES[label]} {PHRASES[position]}" in caption
        if len(items) > 1:
            assert relation != "and" and relation in true_relations(*scene["positions"][:2]), caption
        relations[relation] += 1
    assert len(relations) >= 4  # the scenes exercise several relation words


def _differences(truth, negative) -> list[tuple[int, int]]:
    """(item, attribute) pairs where two parsed item lists differ."""
    return [(i, k) for i, (a, b) in enumerate(zip(truth, negative)) for k in range(4) if a[k] != b[k]]


def test_every_negative_changes_exactly_the_intended_thing(scenes, bench):
    seen = Counter()
    for i in range(len(scenes)):
        sample = bench[i]
        truth, relation = parse(sample["caption"])
        labels, colours, positions = [t[2] for t in truth], [t[1] for t in truth], [t[3] for t in truth]
        assert set(sample["negatives"]) == set(KINDS)
        for kind, negatives in sample["negatives"].items():
            assert len(negatives) == len(set(negatives)) <= 3 and sample["caption"] not in negatives
            seen[kind] += bool(negatives)
            for text in negatives:
                items, rel = parse(text)
                assert len(items) == len(truth), text
                diff = _differences(truth, items)
                assert rel == (OPPOSITE[relation] if kind == "relation" else relation), text
                if kind == "garment":
                    assert len(diff) == 1 and diff[0][1] == 2 and items[diff[0][0]][2] not in labels, text
                elif kind == "colour":
                    assert len(diff) == 1 and diff[0][1] == 1 and items[diff[0][0]][1] not in colours, text
                elif kind == "size":
                    assert len(diff) == 1 and diff[0][1] == 0, text
                elif kind == "position":
                    assert len(diff) == 1 and diff[0][1] == 3 and items[diff[0][0]][3] not in positions, text
                elif kind == "relation":
                    assert diff == [] and rel not in true_relations(*positions[:2]), text
                else:
                    assert Counter(text.split()) == Counter(sample["caption"].split()), text
                    changed = {k for _, k in diff}
                    assert len({i for i, _ in diff}) == 2 and changed in ({1}, {2}), text
                    a, b = sorted({i for i, _ in diff})
                    attribute = changed.pop()
                    assert items[a][attribute] == truth[b][attribute] and items[b][attribute] == truth[a][attribute], text
        n = len(truth)
        assert len(sample["negatives"]["size"]) == min(n, 3)
        assert all(sample["negatives"][kind] for kind in ("garment", "colour", "position"))
        assert bool(sample["negatives"]["relation"]) == (relation in OPPOSITE)
        distinct = any(truth[a][1:3] != truth[b][1:3] for a in range(n) for b in range(a + 1, n))
        assert bool(sample["negatives"]["swap"]) == distinct
    assert all(seen[kind] for kind in KINDS), seen


def test_swap_of_garments_when_colours_are_equal_and_none_when_items_match():
    sample = {"labels": torch.tensor([7, 8]), "colours": ["red", "red"], "sizes": ["small", "large"], "positions": ["left", "right"]}
    truth, negatives = hard_negatives(sample, np.random.default_rng(0))
    assert truth == "a photo of a small red sneaker on the left to the left of a large red bag on the right."
    assert negatives["swap"] == ["a photo of a small red bag on the left to the left of a large red sneaker on the right."]
    assert negatives["relation"] == ["a photo of a small red sneaker on the left to the right of a large red bag on the right."]
    same = {**sample, "labels": torch.tensor([8, 8])}
    assert hard_negatives(same, np.random.default_rng(0))[1]["swap"] == []
    single = {"labels": torch.tensor([3]), "colours": ["pink"], "sizes": ["large"], "positions": ["centre"]}
    truth, negatives = hard_negatives(single, np.random.default_rng(0), per_kind=5)
    assert truth == "a photo of a large pink dress in the centre."
    assert negatives["relation"] == negatives["swap"] == [] and negatives["size"] == ["a photo of a small pink dress in the centre."]
    assert len(negatives["garment"]) == len(negatives["colour"]) == len(negatives["position"]) == 5


def test_next_to_has_no_relation_negative():
    sample = {"labels": torch.tensor([1, 2]), "colours": ["red", "blue"], "sizes": ["small", "large"], "positions": ["left", "centre"]}
    drawn = {}
    for seed in range(20):
        truth, negatives = hard_negatives(sample, np.random.default_rng(seed))
        drawn[parse(truth)[1]] = negatives["relation"]
    assert drawn == {"next to": [], "to the left of": ["a photo of a small red trouser on the left to the right of a large blue pullover in the centre."]}


def test_samples_are_a_pure_function_of_seed_and_index(scenes, bench):
    again = CompositionalScenes(FashionScenes("test", 64, seed=1, length=50), seed=0)
    for i in (0, 7, 31):
        a, b = bench[i], again[i]
        assert a["caption"] == b["caption"] and a["negatives"] == b["negatives"] and torch.equal(a["image"], b["image"])
    assert bench[0]["negatives"] != bench[1]["negatives"]
    reseeded = CompositionalScenes(scenes, seed=5)
    assert any(reseeded[i]["negatives"] != bench[i]["negatives"] for i in range(5))
    with pytest.raises(ValueError, match="annotated"):
        CompositionalScenes(FashionScenes("test", 64, seed=1, length=5, annotate=False))


def test_compositional_accuracy_on_hand_made_scores():
    negatives = [torch.tensor([0.5, 0.2]), torch.tensor([0.9]), torch.tensor([0.1, 0.3, 0.2])]
    acc, chance = compositional_accuracy(torch.tensor([1.0, 1.0, 1.0]), negatives)
    assert acc == 100.0 and chance == pytest.approx((100 / 3 + 100 / 2 + 100 / 4) / 3)
    assert compositional_accuracy(torch.tensor([0.6, 0.9, 0.3]), negatives)[0] == pytest.approx(100 / 3)  # a tie with the best negative fails
    assert compositional_accuracy(torch.full((3,), 0.4), [torch.full((k,), 0.4) for k in (2, 1, 3)]) == (0.0, pytest.approx((100 / 3 + 50 + 25) / 3))
    for k in (1, 4):
        assert compositional_accuracy(torch.zeros(2), [torch.zeros(k)] * 2)[1] == pytest.approx(100 / (1 + k))
    with pytest.raises(ValueError):
        compositional_accuracy(torch.zeros(1), [torch.zeros(0)])


class FakeModel(torch.nn.Module):
    """An image is embedded as the one-hot of its true caption, a caption as its own one-hot (oracle), or everything alike (constant)."""

    dim = 2048

    def __init__(self, truths: dict[bytes, str] | None) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.truths, self.vocab, self.modes = truths, {}, []

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.vocab.setdefault(t, len(self.vocab)) for t in texts])

    def _one_hot(self, ids: list[int]) -> torch.Tensor:
        if self.truths is None:
            return torch.ones(len(ids), 4)
        assert len(self.vocab) <= self.dim
        return torch.nn.functional.one_hot(torch.as_tensor(ids), self.dim).float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        truths = self.truths or {}
        return self._one_hot([self.vocab.setdefault(truths.get(image.numpy().tobytes(), ""), len(self.vocab)) for image in images])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self._one_hot(tokens.tolist())


def test_model_scores_an_oracle_at_100_and_a_constant_model_at_0(bench):
    samples = [bench[i] for i in range(len(bench))]
    truths = {to_float(s["image"]).numpy().tobytes(): s["caption"] for s in samples}
    counts = {kind: sum(bool(s["negatives"][kind]) for s in samples) for kind in KINDS}
    chance = {kind: np.mean([100 / (1 + len(s["negatives"][kind])) for s in samples if s["negatives"][kind]]) for kind in KINDS}

    oracle = FakeModel(truths).train()
    result = compositional_scores(oracle, bench, batch_size=16)
    assert oracle.training and oracle.modes and not any(oracle.modes)  # encoded in eval mode, training mode restored
    assert result["metrics"] == {**{f"{kind}_acc": 100.0 for kind in KINDS}, "mean_acc": 100.0}
    assert result["details"]["n"] == counts and result["details"]["per_kind"] == 3
    assert result["details"]["chance"] == pytest.approx(chance)
    assert all(0 < counts[kind] < len(bench) for kind in ("relation", "swap"))

    constant = compositional_scores(FakeModel(None).eval(), bench, batch_size=16)
    assert constant["metrics"] == {**{f"{kind}_acc": 0.0 for kind in KINDS}, "mean_acc": 0.0}
    assert constant["details"]["chance"] == pytest.approx(chance)
