"""The fine-tuning tasks (finetune_lowshot, finetune_segmentation, finetune_detection) on a tiny
trained model: metrics in range, the checkpoint untouched, the same seed the same numbers, layer
decay applied, the presence targets, the pyramid's shapes and the flipped boxes."""
import dataclasses

import pytest
import torch

from langmim.api import load
from langmim.config import load_config
from langmim.data.scenes import EVAL_SCENE_SEED, FashionScenes
from langmim.errors import ConfigError
from langmim.eval import finetune as finetune_module
from langmim.eval.finetune import PresenceScenes
from langmim.eval.finetune_dense import DenseFineTuner, SimpleFeaturePyramid, flip_boxes, pyramid_scale, train_dense
from langmim.eval.segmentation import SegmentationHead
from langmim.eval.suite import evaluate

TASKS = ["finetune_lowshot", "finetune_segmentation", "finetune_detection"]


@pytest.fixture(scope="module")
def model(clip_run):
    return load(clip_run)


def run(model, tasks, **changes):
    cfg = dataclasses.replace(model.config.eval, **changes)
    return evaluate(model, tasks, cfg, None, "clip", log=lambda _: None)


def test_metrics_in_range_and_the_checkpoint_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    results = run(model, TASKS)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    lowshot = results["finetune_lowshot"]
    assert set(lowshot["metrics"]) == {"map", "map_0_1pct", "map_0_5pct"}
    assert lowshot["metrics"]["map"] == lowshot["metrics"]["map_0_1pct"]
    assert lowshot["split_sizes"] == {"test": 50, "pool": 20000, "train_0_1pct": 20, "train_0_5pct": 100}
    assert all(0 < v <= 100 for v in lowshot["metrics"].values())
    assert lowshot["details"]["runs"]["map_0_5pct"]["steps"] >= 2
    seg = results["finetune_segmentation"]
    assert seg["split_sizes"] == {"train": 120, "test": 50} and 0 < seg["metrics"]["miou"] <= 100
    assert 0 <= seg["metrics"]["pixel_accuracy"] <= 100 and seg["details"]["steps"] == 2
    # 8 px patches: segmentation reads 4 px cells (2x), detection 8 px ones (the token grid itself)
    assert seg["details"]["pyramid_scale"] == 2 and results["finetune_detection"]["details"]["pyramid_scale"] == 1
    det = results["finetune_detection"]
    assert {"ap", "ap50", "ap75"} <= set(det["metrics"]) and det["split_sizes"] == {"train": 120, "test": 50}
    assert all(v is None or 0 <= v <= 100 for v in det["metrics"].values())


def test_same_seed_same_numbers(model):
    first, second = (run(model, TASKS, finetune_dense_batch_size=16, finetune_lowshot_fractions=[0.001]) for _ in range(2))
    for name in TASKS:
        assert first[name]["metrics"] == second[name]["metrics"]
        assert first[name]["details"] == second[name]["details"]
    other = run(model, ["finetune_segmentation"], finetune_dense_batch_size=16, seed=1)
    assert other["finetune_segmentation"]["details"]["final_loss"] != first["finetune_segmentation"]["details"]["final_loss"]


def test_lowshot_fine_tunes_under_the_configured_layer_decay(model, monkeypatch):
    seen = []
    original = finetune_module.layer_decay_groups

    def spy(classifier, weight_decay, layer_decay):
        groups = original(classifier, weight_decay, layer_decay)
        seen.append({g["lr_scale"] for g in groups})
        return groups

    monkeypatch.setattr(finetune_module, "layer_decay_groups", spy)
    run(model, ["finetune_lowshot"], finetune_layer_decay=0.5, finetune_lowshot_fractions=[0.001, 0.002])
    depth = len(model.visual.blocks)
    assert seen == [{0.5 ** k for k in range(depth + 2)}] * 2


def test_dense_layer_decay_scales_the_updates(model):
    """Under a strong decay the patch embedding (scale decay ** (depth + 1)) barely moves while
    the new pyramid and head (scale 1) move as much as without it."""
    images = torch.rand(8, 3, model.image_size, model.image_size)

    def moved(layer_decay):
        torch.manual_seed(0)
        tuner = DenseFineTuner(model.visual, SegmentationHead(64, 3), scale=2, drop_path=0.0)
        start = {n: p.detach().clone() for n, p in tuner.named_parameters()}
        train_dense(tuner, 8, lambda rows, flip: tuner(images[rows]).square().mean(), steps=3, batch_size=4, lr=1e-2,
                    layer_decay=layer_decay, warmup_fraction=0.0)
        change = {n: float((p.detach() - start[n]).abs().max()) for n, p in tuner.named_parameters()}
        return change["visual.patch_embed.proj.weight"], change["head.conv.weight"]

    embed_plain, head_plain = moved(1.0)
    embed_decayed, head_decayed = moved(0.1)
    assert embed_plain > 0 and embed_decayed < 0.01 * embed_plain
    assert head_decayed == pytest.approx(head_plain, rel=0.5)
    assert torch.equal(model.visual.patch_embed.proj.weight, load(model.checkpoint_path).visual.patch_embed.proj.weight)


def test_presence_scenes_hold_each_scenes_garments():
    scenes = FashionScenes("train", 32, seed=EVAL_SCENE_SEED, length=6)
    data = PresenceScenes(scenes, batch_size=4)
    assert len(data) == 6 and data[0][0].dtype == torch.uint8 and data[0][0].shape == (3, 32, 32)
    for i in range(6):
        assert data[i][1].nonzero().flatten().tolist() == sorted(set(scenes[i]["labels"].tolist()))


def test_pyramid_levels_and_flipped_boxes():
    grid = torch.randn(2, 128, 4, 4)
    assert SimpleFeaturePyramid(128, 64, 4)(grid).shape == (2, 64, 16, 16)
    assert SimpleFeaturePyramid(128, 64, 2)(grid).shape == (2, 64, 8, 8)
    assert SimpleFeaturePyramid(128, 64, 1)(grid).shape == (2, 64, 4, 4)
    with pytest.raises(ValueError):
        SimpleFeaturePyramid(128, 64, 3)
    # the level nearest a stride without going finer: the demo's 16 px patches and the web encoder's 8 px
    assert [pyramid_scale(patch, 4) for patch in (16, 8, 14, 32, 4)] == [4, 2, 2, 4, 1]
    assert [pyramid_scale(patch, 8) for patch in (16, 8, 14, 32, 4)] == [2, 1, 1, 4, 1]
    boxes = [torch.tensor([[2, 4, 10, 20], [30, 0, 64, 8]]), torch.zeros(0, 4)]
    flipped = flip_boxes(boxes, 64)
    assert flipped[0].tolist() == [[54, 4, 62, 20], [0, 0, 34, 8]] and len(flipped[1]) == 0
    assert all(torch.equal(a, b) for a, b in zip(flip_boxes(flipped, 64), boxes))


@pytest.mark.parametrize("override", ["eval.finetune_lowshot_fractions=[0.01,0]", "eval.finetune_lowshot_fractions=[1.5]",
                                      "eval.finetune_segmentation_steps=0", "eval.finetune_dense_batch_size=0"])
def test_out_of_range_settings_are_refused(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])
