"""The text-only control: chance where the captions carry no answer, near 100% where they leak it,
and beside the model's unchanged figures in the compositional task."""
import math
import random

import pytest

from langmim.api import load
from langmim.data.compositional import KINDS, CompositionalScenes
from langmim.eval.compositional import compositional_scores
from langmim.eval.context import EvalContext
from langmim.eval.suite import TASKS
from langmim.eval.text_only import SOLVABLE_MARGIN, text_only_accuracy

WORDS = [f"w{i}" for i in range(30)]


def sentence(rng: random.Random, length: int) -> str:
    return " ".join(rng.choices(WORDS, k=length)) + "."


def groups(make, n: int, seed: int) -> list[tuple[str, list[str]]]:
    """n groups of make(rng) -> (true caption, negatives), from a generator seeded with `seed`."""
    rng = random.Random(seed)
    return [make(rng) for _ in range(n)]


def balanced(rng: random.Random) -> tuple[str, list[str]]:
    """1 to 3 negatives and the truth drawn alike, so which one is the truth is a coin toss."""
    captions = [sentence(rng, rng.randint(3, 8)) for _ in range(rng.randint(2, 4))]
    return captions[0], captions[1:]


def longer_truth(rng: random.Random) -> tuple[str, list[str]]:
    length = rng.randint(4, 9)
    return sentence(rng, length), [sentence(rng, rng.randint(3, length - 1)) for _ in range(rng.randint(1, 3))]


def marked_truth(rng: random.Random) -> tuple[str, list[str]]:
    words = sentence(rng, rng.randint(3, 8)).split()
    words.insert(rng.randint(0, len(words)), "zebra")
    return " ".join(words), [sentence(rng, rng.randint(3, 9)) for _ in range(rng.randint(1, 3))]


def test_balanced_negatives_score_chance_deterministically():
    train, test = groups(balanced, 400, seed=0), groups(balanced, 1000, seed=1)
    acc, chance = text_only_accuracy(train, test)
    chances = [1 / (1 + len(negatives)) for _, negatives in test]
    standard_error = 100 * math.sqrt(sum(p * (1 - p) for p in chances)) / len(test)
    assert chance == pytest.approx(100 * sum(chances) / len(test))
    assert abs(acc - chance) < 4 * standard_error, (acc, chance, standard_error)
    assert text_only_accuracy(train, test) == (acc, chance)


def test_a_planted_length_cue_is_found():
    acc, chance = text_only_accuracy(groups(longer_truth, 300, seed=2), groups(longer_truth, 300, seed=3))
    assert acc > 90 and chance < 50


def test_a_marker_word_is_found():
    acc, _ = text_only_accuracy(groups(marked_truth, 300, seed=4), groups(marked_truth, 300, seed=5))
    assert acc >= 99


def test_text_only_accuracy_needs_training_groups():
    with pytest.raises(ValueError):
        text_only_accuracy([], groups(balanced, 5, seed=6))


def test_the_compositional_task_reports_the_control_beside_unchanged_model_metrics(clip_run):
    model = load(clip_run)
    ctx = EvalContext(model, model.config.eval, log=lambda _: None)
    result = TASKS["compositional"].run(ctx)
    alone = compositional_scores(model, CompositionalScenes(ctx.scenes("test"), seed=ctx.cfg.seed), ctx.cfg.batch_size)
    metrics = result["metrics"]
    assert {k: v for k, v in metrics.items() if not k.startswith("text_only_")} == alone["metrics"]
    assert TASKS["compositional"].headline == "mean_acc"
    kinds = [kind for kind in KINDS if f"{kind}_acc" in alone["metrics"]]
    control = {kind: metrics[f"text_only_{kind}_acc"] for kind in kinds}
    assert set(metrics) == {*alone["metrics"], *(f"text_only_{kind}_acc" for kind in kinds), "text_only_mean_acc"}
    assert all(0 <= acc <= 100 for acc in control.values())
    assert metrics["text_only_mean_acc"] == pytest.approx(sum(control.values()) / len(control))
    details = result["details"]
    chance = details["chance"]
    assert details["text_solvable_kinds"] == [kind for kind in kinds if control[kind] - chance[kind] > SOLVABLE_MARGIN]
    assert details["text_only_train_scenes"] == ctx.cfg.scene_train_size  # 120 in the tiny evaluation
    assert result["split_sizes"] == {"test": ctx.cfg.scene_test_size}
