"""The supervised ceiling: its targets are the scenes' ground truth, and it trains, loads and
evaluates through the same paths as every other method. The fixed scene set of the data-limited
regime repeats exactly N scenes per epoch."""
import json
import re

import pytest
import torch

from conftest import TINY_EVAL, tiny_overrides
from langmim.api import load
from langmim.config import load_config
from langmim.data.pretrain import FixedScenes, build_pretrain_dataset, build_pretrain_loader
from langmim.data.scene_labels import IGNORE, NO_GARMENT, scene_targets, subcell_labels
from langmim.data.scenes import FashionScenes
from langmim.engine.loop import pretrain
from langmim.errors import ConfigError
from langmim.eval.suite import evaluate


def test_subcell_labels_name_the_majority_garment_of_each_cell():
    mask = torch.zeros(1, 8, 8, dtype=torch.int64)
    mask[0, 0:2, 0:2] = 3  # the top-left cell of the top-left patch, whole
    mask[0, 4:6, 6:7] = 5  # half of a cell of the bottom-right patch: a tie goes to background
    mask[0, 4:6, 4:6] = 7
    mask[0, 4, 4] = 2  # one pixel of 2 against three of 7
    labels = subcell_labels(mask, patch=4, subcells=2)  # 2 x 2 patches of 2 x 2 cells
    assert labels.shape == (1, 4, 4)
    assert labels[0, 0].tolist() == [3, 0, 0, 0]
    assert labels[0, 1].tolist() == [0, 0, 0, 0]
    assert labels[0, 3].tolist() == [7, 0, 0, 0]  # patch (1, 1): cells (4:6, 4:6) and the tied (4:6, 6:8)


def test_scene_targets_follow_the_items():
    t = scene_targets([2, 5, 2], ["red", "blue", "red"], ["left", "centre", "top"])
    assert t["presence"].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    assert t["colour"][2] == 0 and t["colour"][5] == 2 and (t["colour"][[0, 1, 3, 4, 6, 7, 8, 9]] == IGNORE).all()
    assert int(t["count"]) == 2 and int(t["centre"]) == 5
    two_colours = scene_targets([4, 4], ["red", "green"], ["left", "right"])
    assert int(two_colours["colour"][4]) == IGNORE and int(two_colours["centre"]) == NO_GARMENT


def test_loader_targets_match_the_annotated_scenes():
    cfg = load_config(None, tiny_overrides("/tmp/unused", "supervised", steps=1))
    batch = next(iter(build_pretrain_loader(cfg, None, 16, 0, scene_labels=True)))
    scenes = FashionScenes("train", 32, seed=0, augment=True, plain_prob=cfg.data.plain_share)
    first = scenes[0]
    assert torch.equal(batch["image"][0], first["image"])
    assert torch.equal(batch["patch_labels"][0], subcell_labels(first["mask"][None], 8)[0])
    expected = scene_targets(first["labels"].tolist(), first["colours"], first["positions"])
    assert all(torch.equal(batch[key][0], value) for key, value in expected.items())


def test_the_ceiling_trains_loads_and_evaluates_like_the_others(tmp_path):
    run = tmp_path / "supervised"
    pretrain(load_config(None, tiny_overrides(run, "supervised", steps=30, **{"train.lr": 3e-3}) + TINY_EVAL), log_tensorboard=False)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_patch", "loss_presence", "loss_colour", "loss_count", "loss_centre"} <= set(logged[-1])
    first, last = (sum(r["loss_patch"] for r in part) / 5 for part in (logged[:5], logged[-5:]))
    assert last < 0.8 * first  # it learns the garment under each patch
    model = load(run)
    assert model.step == 30 and not model.has_text
    results = evaluate(model, ["cells", "zeroshot"], model.config.eval, tmp_path / "results", "supervised")
    assert list(results) == ["cells"] and 0 <= results["cells"]["metrics"]["occupied_accuracy"] <= 100


def test_the_ceiling_needs_the_scenes_ground_truth(tmp_path):
    cfg = load_config(None, ["method=supervised", "data.name=csv", f"data.root={tmp_path / 'pairs.csv'}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="method supervised trains on fashion-scenes' ground truth; data.name=csv has none"):
        pretrain(cfg, log_tensorboard=False)


def test_a_fixed_scene_set_repeats_exactly_n_scenes_per_epoch():
    cfg = load_config(None, tiny_overrides("/tmp/unused", "clip", steps=1, **{"data.num_scenes": 12}))
    data = build_pretrain_dataset(cfg)
    assert isinstance(data, FixedScenes) and len(data) == 12
    epochs = [[data.scene_of(g) for g in range(e * 12, (e + 1) * 12)] for e in range(3)]
    assert all(sorted(order) == list(range(12)) for order in epochs)  # every scene once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # in a fresh order each epoch
    again = build_pretrain_dataset(cfg)
    assert [again.scene_of(g) for g in range(36)] == sum(epochs, [])  # deterministic from the seed
    g1 = 5
    g2 = next(g for g in range(12, 24) if data.scene_of(g) == data.scene_of(g1))  # the same scene, next epoch
    first, second = data[g1], data[g2]
    assert re.sub(r"\b(left|right)\b", "", first["caption"]) == re.sub(r"\b(left|right)\b", "", second["caption"])  # one caption (a flip swaps sides)
    assert first["index"] == g1 and second["index"] == g2 and first["scene"] == second["scene"]
    visits = [data[g] for g in range(12, 24) if data.scene_of(g) < 12]
    assert any(v["image"].float().sub(data.scenes[v["scene"]]["image"].float()).abs().sum() > 0 for v in visits)  # augmented afresh


def test_num_scenes_is_checked():
    with pytest.raises(ConfigError, match="data.num_scenes=0: a fixed set needs at least 1 scene"):
        load_config(None, ["data.num_scenes=0"])
    with pytest.raises(ConfigError, match="data.num_scenes fixes a set of fashion-scenes; data.name=csv brings its own samples"):
        load_config(None, ["data.num_scenes=10", "data.name=csv"])
