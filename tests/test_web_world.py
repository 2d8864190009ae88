"""The web-like world: determinism, the stated shares and Zipf law, masks and boxes, truthful captions, validation."""
from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from langmim.data.scenes import COLOURS, ITEM_THRESHOLD, NOUNS, POSITION_PHRASES, POSITIONS
from langmim.data.scenes.preview import preview_grid
from langmim.data.scenes.web import (
    NUM_CONCEPTS,
    WebWorld,
    concept_frequencies,
    concept_rank_order,
    head_tail_concepts,
    render_web,
    web_pair,
    web_scene,
)
from langmim.data.scenes.web_captions import HYPERNYMS, truthful_caption
from langmim.errors import ConfigError

CANVAS = 64
DRAWS = 10_000
WORLD = WebWorld()


@pytest.fixture(scope="module")
def train_pairs(train_items):
    """The layouts and captions of DRAWS pre-training scenes (nothing painted)."""
    images, labels = train_items
    return [web_pair(images, labels, WORLD, "train", 0, i, CANVAS) for i in range(DRAWS)]


def pillow_patch(images: np.ndarray, source: int, side: int) -> np.ndarray:
    """An item resized by Pillow itself, independently of the world's resizing."""
    return np.asarray(Image.fromarray(images[source]).resize((side, side), Image.BILINEAR))


def cell_of(x0: int, y0: int, side: int) -> int:
    row, col = (min(int((v + side / 2) * 3 // CANVAS), 2) for v in (y0, x0))
    return 3 * row + col


def test_scene_is_a_pure_function_of_seed_index_and_world(train_items):
    images, labels = train_items
    for index in (0, 7, 123):
        a, b = (web_scene(images, labels, WORLD, "train", 3, index, CANVAS) for _ in range(2))
        assert a.caption == b.caption and a.items == b.items
        for key in ("image", "mask", "boxes"):
            assert np.array_equal(getattr(a, key), getattr(b, key))
    base = [web_scene(images, labels, WORLD, "train", 3, i, CANVAS) for i in range(5)]
    for change in ({"max_scale": 0.5}, {"zipf_exponent": 2.0}, {"colour_drop": 0.0}, {"textured_background": 1.0}):
        other = [web_scene(images, labels, replace(WORLD, **change), "train", 3, i, CANVAS) for i in range(5)]
        assert any(o.caption != s.caption or not np.array_equal(o.image, s.image) for o, s in zip(other, base)), change
    assert web_scene(images, labels, WORLD, "train", 4, 0, CANVAS).caption != base[0].caption


def test_caption_kinds_and_drops_follow_the_settings(train_pairs):
    kinds = [p.kind for p in train_pairs]
    assert abs(kinds.count("mismatch") / DRAWS - WORLD.mismatch_share) < 0.01
    assert abs(kinds.count("boilerplate") / DRAWS - WORLD.boilerplate_share) < 0.01
    mentions = [m for p in train_pairs for m in p.mentions]  # drawn for every scene, used by own captions
    for attribute, share in (("colour", WORLD.colour_drop), ("size", WORLD.size_drop), ("position", WORLD.position_drop)):
        dropped = sum(getattr(m, attribute) is None for m in mentions) / len(mentions)
        assert abs(dropped - share) < 0.01, attribute
    with_two = [p for p in train_pairs if len(p.items) > 1]
    assert abs(sum(len(p.mentions) > 1 for p in with_two) / len(with_two) - WORLD.extra_item_prob) < 0.015
    for pair in train_pairs:
        assert sum(it.named for it in pair.items) == (len(pair.mentions) if pair.kind == "own" else 0)


def test_kept_words_are_true_and_in_the_caption(train_items):
    images, labels = train_items
    world = replace(WORLD, misspell_prob=0.0, mismatch_share=0.0, boilerplate_share=0.0)
    for index in range(300):
        pair = web_pair(images, labels, world, "train", 0, index, CANVAS)
        assert pair.kind == "own" and pair.mentions
        by_order = {it.order: it for it in pair.items}
        assert by_order[pair.mentions[0].order].area == max(it.area for it in pair.items)  # the most salient
        for m in pair.mentions:
            item = by_order[m.order]
            assert m.noun in NOUNS[item.label] + HYPERNYMS[item.label] and m.noun in pair.caption
            assert m.colour in (None, item.colour) and m.size in (None, item.size)
            assert m.position in (None, POSITIONS[cell_of(item.x0, item.y0, item.side)])
            for word in (m.colour, m.size):
                assert word is None or word in pair.caption
            assert m.position is None or any(p in pair.caption for p in POSITION_PHRASES[m.position])


def test_boilerplate_names_nothing(train_pairs):
    words = {*COLOURS, *(n for nouns in NOUNS + HYPERNYMS for n in nouns)}
    texts = [p.caption for p in train_pairs if p.kind == "boilerplate"]
    assert texts and not any(set(re.findall(r"[a-z-]+", t.lower())) & words for t in texts)


def test_concepts_follow_the_zipf_law(train_pairs, test_items):
    expected = concept_frequencies(WORLD)
    assert expected.sum() == pytest.approx(1.0) and np.all(np.diff(expected[concept_rank_order()]) <= 0)
    counts = np.bincount([it.concept for p in train_pairs for it in p.items], minlength=NUM_CONCEPTS)
    n = counts.sum()
    chi2 = ((counts - n * expected) ** 2 / (n * expected)).sum()
    assert chi2 < stats.chi2.ppf(0.999, NUM_CONCEPTS - 1)
    top = concept_rank_order()[:10]
    assert np.all(np.abs(counts[top] / n - expected[top]) < 4 * np.sqrt(expected[top] * (1 - expected[top]) / n))
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts[concept_rank_order()[:50]] / n), 1)[0]
    assert abs(slope + WORLD.zipf_exponent) < 0.1
    images, labels = test_items  # evaluation scenes: every concept alike
    held_out = np.bincount([it.concept for i in range(2000) for it in web_pair(images, labels, WORLD, "test", 0, i, CANVAS).items],
                           minlength=NUM_CONCEPTS)
    assert stats.chisquare(held_out).pvalue > 0.001


def test_head_and_tail_concepts():
    head, tail = head_tail_concepts(WORLD)
    frequencies = concept_frequencies(WORLD)
    assert len(head) == WORLD.head_concepts and len(tail) == WORLD.tail_concepts and not set(head) & set(tail)
    assert frequencies[head].min() > frequencies[tail].max()


def test_masks_and_boxes_agree_with_the_items(train_items):
    images, labels = train_items
    painted_distractors = 0
    for index in range(80):
        pair = web_pair(images, labels, WORLD, "train", 1, index, CANVAS)
        scene = render_web(pair, CANVAS)
        assert WORLD.min_items <= len(scene.items) <= WORLD.max_items and scene.boxes.shape == (len(scene.items), 4)
        expected = np.zeros((CANVAS, CANVAS), dtype=np.int64)  # each item painted over the earlier ones
        for item in scene.items:
            assert 0 <= item.x0 and 0 <= item.y0 and item.x0 + item.side <= CANVAS and item.y0 + item.side <= CANVAS
            assert item.side == round(item.scale * CANVAS) and WORLD.min_scale <= item.scale <= WORLD.max_scale
            assert item.label == labels[item.source] and item.cell == cell_of(item.x0, item.y0, item.side)
            patch = pillow_patch(images, item.source, item.side)
            region = expected[item.y0:item.y0 + item.side, item.x0:item.x0 + item.side]
            np.copyto(region, (patch > ITEM_THRESHOLD * 255) * (1 + item.label), where=patch > 0)
        assert np.array_equal(scene.mask, expected)
        for label in np.unique(scene.mask[scene.mask > 0]) - 1:
            mine = [i for i, it in enumerate(scene.items) if it.label == label]
            assert sum(scene.items[i].area for i in mine) == (scene.mask == 1 + label).sum()
            inside = np.zeros_like(scene.mask, dtype=bool)
            for x0, y0, x1, y1 in scene.boxes[mine]:
                inside[y0:y1, x0:x1] = True
            assert inside[scene.mask == 1 + label].all()
        for item, (x0, y0, x1, y1) in zip(scene.items, scene.boxes):
            assert item.area == 0 or (scene.mask[y0:y1, x0:x1] == 1 + item.label).any()
        bare = render_web(replace(pair, backdrop=replace(pair.backdrop, distractors=0)), CANVAS)
        assert np.array_equal(bare.mask, scene.mask)
        differs = (bare.image != scene.image).any(axis=2)
        assert not scene.mask[differs].any()  # distractor pixels are background in the mask
        painted_distractors += differs.any()
    assert painted_distractors > 20


def test_truthful_caption_names_every_item_where_it_is(test_items):
    images, labels = test_items
    for index in range(50):
        scene = web_scene(images, labels, WORLD, "test", 0, index, CANVAS)
        caption = truthful_caption(scene.items, CANVAS)
        starts = []
        for item in scene.items:
            where = POSITION_PHRASES[POSITIONS[cell_of(item.x0, item.y0, item.side)]][0]
            phrase = f"{item.size} {item.colour} {NOUNS[item.label][0]} {where}"
            assert phrase in caption
            starts.append((caption.index(phrase), -item.area))
        assert [a for _, a in sorted(starts)] == sorted(a for _, a in starts)  # the most visible first
        assert caption.count(" and ") + caption.count(", ") == len(scene.items) - 1


@pytest.mark.parametrize(("change", "field"), [
    ({"colour_drop": 1.5}, "colour_drop"),
    ({"misspell_prob": math.nan}, "misspell_prob"),
    ({"min_items": 0}, "min_items"),
    ({"max_items": 1}, "max_items"),
    ({"max_items": True}, "max_items"),
    ({"min_scale": 0.0}, "min_scale"),
    ({"max_scale": 0.2}, "max_scale"),
    ({"zipf_exponent": -1.0}, "zipf_exponent"),
    ({"max_distractors": -1}, "max_distractors"),
    ({"head_concepts": 60}, "tail_concepts"),
    ({"eval_uniform_concepts": 1}, "eval_uniform_concepts"),
    ({"mismatch_share": 0.6, "boilerplate_share": 0.5}, "mismatch_share"),
])
def test_validate_names_the_field(change, field):
    assert WORLD.validate() is WORLD
    with pytest.raises(ConfigError, match=field):
        replace(WORLD, **change).validate()


def test_preview_grid_draws_captioned_scenes():
    sheet = preview_grid(WORLD, n=4, canvas=32)
    assert sheet.mode == "RGB" and sheet.width >= 2 * 3 * 32 and sheet.height >= 2 * 3 * 32


def test_the_clean_worlds_scenes_are_unchanged():
    """The clean world, its kept results and their verdicts stay valid: a digest of its first
    scenes (train with augmentation, test) taken before the web world was added."""
    import hashlib

    from langmim.data.scenes import FashionScenes

    digest = hashlib.sha256()
    for split, kwargs in (("train", {"plain_prob": 0.3, "augment": True}), ("test", {"seed": 1})):
        scenes = FashionScenes(split, 64, **kwargs)
        for i in range(64):
            s = scenes[i]
            for part in (s["image"].numpy().tobytes(), s["caption"].encode(), s["mask"].numpy().tobytes(), s["boxes"].numpy().tobytes()):
                digest.update(part)
    assert digest.hexdigest() == "81c0376e167f0ad8ce8df389e78c0b034f304823ed265def744e47b2a9f84001"


def test_fashion_scenes_in_the_web_world_train_on_web_captions_and_evaluate_on_true_ones(train_items, test_items):
    from langmim.data.scenes import FashionScenes
    from langmim.data.scenes.sampler import _swap_left_right

    train = FashionScenes("train", CANVAS, seed=3, world=WORLD, augment=True)
    test = FashionScenes("test", CANVAS, seed=3, world=WORLD)
    for i in range(20):
        sample, again = train[i], train[i]
        assert torch.equal(sample["image"], again["image"]) and sample["caption"] == again["caption"]
        unflipped = web_scene(*train_items, WORLD, "train", 3, i, CANVAS)
        assert sample["caption"] == (_swap_left_right(unflipped.caption) if sample["flipped"] else unflipped.caption)
        assert torch.equal(sample["image"], torch.from_numpy((unflipped.image[:, ::-1] if sample["flipped"] else unflipped.image).copy()).permute(2, 0, 1))
        assert sample["shift"] == (0, 0) and len(sample["labels"]) >= WORLD.min_items
        truth = test[i]
        items = web_scene(*test_items, WORLD, "test", 3, i, CANVAS).items
        assert truth["caption"] == truthful_caption(items, CANVAS)


def test_the_web_world_is_a_config_setting_checked_before_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom langmim.config import load_config\nfrom langmim.errors import ConfigError\n"
            "cfg = load_config('web', ['data.web.mismatch_share=0.36'])\n"
            "assert (cfg.data.world, cfg.model.patch_size, cfg.data.web.mismatch_share) == ('web', 8, 0.36)\n"
            "for bad in (['data.web.colour_drop=1.5'], ['method=supervised']):\n"
            "    try:\n        load_config('web', bad)\n    except ConfigError as err:\n        print(err)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "config key 'data.web.colour_drop' must be in [0, 1], got 1.5"
    assert "method=supervised trains on the clean world's scene targets" in out[1]
    assert out[2] == "False"


@pytest.mark.parametrize("method", ["clip", "mae"])
def test_a_run_pretrains_on_the_web_world(tmp_path, method):
    from conftest import tiny_overrides
    from langmim.config import load_config
    from langmim.engine.loop import pretrain
    from langmim.io import list_checkpoints

    pretrain(load_config("web", tiny_overrides(tmp_path, method, steps=2)), log_tensorboard=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002.pt"]
