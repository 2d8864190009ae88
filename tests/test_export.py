"""Exports load strictly into timm and open_clip and give langmim's own features."""
import json

import open_clip
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_overrides
from langmim.api import load
from langmim.cli import main
from langmim.config import load_config, to_dict
from langmim.engine.loop import pretrain

# Two encoder sizes beside the conftest one: patch 8 at 32 px, and patch 16 at 64 px (the demo's grid).
SIZES = {
    "tiny": [],
    "demo-grid": ["model.img_size=64", "model.patch_size=16", "model.width=96", "model.depth=3", "model.heads=3"],
}


@pytest.fixture(scope="module", params=list(SIZES))
def rils_run(request, tmp_path_factory):
    run = tmp_path_factory.mktemp(f"rils_{request.param}")
    pretrain(load_config(None, tiny_overrides(run, "rils", steps=2) + SIZES[request.param]), log_tensorboard=False)
    return run


def test_timm_export_loads_strictly_and_matches(rils_run, tmp_path):
    assert main(["export", str(rils_run), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0
    ours = load(rils_run)
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    size = ours.config.model.img_size
    assert config["pretrained_cfg"]["input_size"] == [3, size, size] and config["pretrained_cfg"]["mean"] == [0.5] * 3

    by_name = timm.create_model(config["architecture"], pretrained=False, num_classes=0, **config["model_args"])
    by_name.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    local = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = ours.visual.forward_features(images)
        for model in (by_name.eval(), local.eval()):
            assert torch.allclose(model.forward_features(images), expected, atol=1e-5)
            assert torch.allclose(model(images), ours.visual(images), atol=1e-5)  # mean of patch tokens


def test_open_clip_export_gives_the_same_embeddings(rils_run, tmp_path):
    assert main(["export", str(rils_run), "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    ours = load(rils_run)
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    size = ours.config.model.img_size
    images = torch.randn(3, 3, size, size)
    captions = ["a small red bag on the left.", "a pair of white trousers in the centre."]
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    assert torch.equal(tokenizer(captions), ours.tokenizer(captions))
    with torch.no_grad():
        assert torch.allclose(theirs.encode_image(images), ours.encode_image(images, normalize=False), atol=1e-5)
        assert torch.allclose(theirs.encode_text(tokenizer(captions)), ours.encode_text(ours.tokenizer(captions), normalize=False), atol=1e-5)
    assert theirs.logit_scale.item() == pytest.approx(ours.logit_scale.item())
    preprocess = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert preprocess["size"] == size and preprocess["mean"] == [0.5] * 3


def test_open_clip_export_of_a_sigmoid_loss_run_carries_its_logit_bias(tmp_path):
    run = tmp_path / "siglip"
    pretrain(load_config(None, tiny_overrides(run, "siglip", steps=2)), log_tensorboard=False)
    assert main(["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    ours = load(run)
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()  # strict: logit_bias is expected and present
    assert theirs.logit_bias.item() == pytest.approx(ours.logit_bias.item()) and ours.logit_bias.item() != -10.0  # it trained
    assert theirs.logit_scale.item() == pytest.approx(ours.logit_scale.item())


def test_safetensors_round_trip_is_lossless(rils_run, tmp_path):
    out = tmp_path / "model.safetensors"
    assert main(["export", str(rils_run), "--format", "safetensors", "--out", str(out)]) == 0
    ours = load(rils_run)
    with safe_open(str(out), "pt") as f:
        config = json.loads(f.metadata()["langmim_config"])
    assert config == json.loads(json.dumps(to_dict(ours.config)))
    reloaded = load(out)  # langmim.load reads its own export
    assert reloaded.step == ours.step and reloaded.has_text
    for name, value in ours.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name
    assert torch.equal(load_file(out)["logit_scale"], ours.logit_scale.detach())


def test_exports_are_readable_by_the_group_and_others(rils_run, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        for fmt, out in (("timm", tmp_path / "timm"), ("safetensors", tmp_path / "m.safetensors")):
            assert main(["export", str(rils_run), "--format", fmt, "--out", str(out)]) == 0
            for path in (out.glob("*") if out.is_dir() else [out]):
                assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(umask)


def test_langmims_timm_export_evaluates_as_an_external_model(rils_run, tmp_path):
    from langmim.eval.external import load_external

    assert main(["export", str(rils_run), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0
    ours = load(rils_run)
    external = load_external(f"timm:local-dir:{tmp_path / 'timm'}")
    images = torch.rand(2, 3, ours.config.model.img_size, ours.config.model.img_size) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(external.visual.forward_features(images), ours.visual.forward_features(images), atol=1e-5)


def test_open_clip_export_of_mae_is_a_clear_error(tmp_path, capsys):
    pretrain(load_config(None, tiny_overrides(tmp_path, "mae", steps=1)), log_tensorboard=False)
    assert main(["export", str(tmp_path), "--format", "open_clip"]) == 2
    assert "needs a checkpoint with a text tower (clip, siglip, flip, slip, rils)" in capsys.readouterr().err


def test_exports_carry_a_model_card_with_the_runs_own_figures(rils_run, tmp_path):
    import dataclasses

    import yaml

    from langmim.api import run_name
    from langmim.eval.suite import evaluate

    model = load(rils_run)
    small = dataclasses.replace(model.config.eval, test_size=60, probe_train_size=80, knn_k=[5])
    evaluate(model, ["knn", "linear"], small, rils_run / "results", run_name(model), log=lambda _: None)
    expected = {}
    for path in (rils_run / "results").glob("*.json"):
        result = json.loads(path.read_text())
        expected.update({(result["task"], result["dataset"], k): v for k, v in result["metrics"].items()})
    for fmt in ("timm", "open_clip"):
        assert main(["export", str(rils_run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
        text = (tmp_path / fmt / "README.md").read_text()
        meta = yaml.safe_load(text.split("---\n")[1])
        assert meta["library_name"] == fmt and meta["license"] == "apache-2.0" and "rils" in meta["tags"]
        (index,) = meta["model-index"]
        found = {(r["task"]["name"], r["dataset"]["name"], m["type"]): m["value"] for r in index["results"] for m in r["metrics"]}
        assert found == expected and index["name"] == rils_run.name  # every figure, exactly, and nothing else
        assert "Steps: 2 of 2 planned, batch 16: 32 images seen" in text and "```yaml" in text
