"""Methods are registered in one place with a spec that declares what they need, their own config
section and their rules: a new method is one file plus one registration line, and everything else
(config, engine, evaluation, export, model cards, report) works from its declarations."""
import json

import pytest
import torch

from conftest import TINY_EVAL, tiny_overrides
from langmim.api import load
from langmim.config import load_config
from langmim.engine.loop import pretrain
from langmim.errors import ConfigError
from langmim.eval.suite import evaluate
from langmim.export import export
from langmim.interface import LoadedModel
from langmim.method_specs import METHODS, MaskedSettings, MethodSpec, method_spec
from langmim.methods import build_method
from langmim.methods.registry import method_class


def test_a_method_of_ones_own_is_one_file_and_one_registration_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, "toy", MethodSpec("toy_method:TokenShrinkage", MaskedSettings))  # the registration line
    run = tmp_path / "toy"
    pretrain(load_config(None, tiny_overrides(run, "toy", steps=2) + TINY_EVAL), log_tensorboard=False)
    assert "token_norm" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])

    model = load(run)
    assert type(model).__name__ == "TokenShrinkage" and isinstance(model, LoadedModel) and model.step == 2
    results = evaluate(model, ["zeroshot", "knn"], model.config.eval, tmp_path / "results", "toy", log=print)
    assert list(results) == ["knn"] and "zeroshot skipped: 'toy' has no text tower" in capsys.readouterr().out
    card = export(model, "timm", tmp_path / "export") / "README.md"
    assert "pre-trained with **Toy**" in card.read_text() and "- masked-image-modeling" in card.read_text()


@pytest.mark.parametrize("method, overrides, message", [
    ("mae", ["init.lock_text=true"], "need a text tower; method mae has none"),
    ("rils", ["init.lock_vision=true"], "init.lock_vision freezes the encoder that method rils trains"),
    ("milan", ["train.fsdp=true", "milan.teacher.embed_dim=32"], "train.fsdp is not supported for MILAN"),
    ("supervised", ["data.name=csv"], "method supervised trains on fashion-scenes' ground truth"),
])
def test_methods_refuse_to_train_with_what_they_cannot_honour(method, overrides, message, tmp_path):
    cfg = load_config(None, [f"method={method}", f"output_dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(ConfigError, match=message):
        pretrain(cfg, log_tensorboard=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    build_method(cfg)  # a saved model with these settings still loads (a MILAN run that asked for FSDP on one process)


def test_capabilities_are_declared_in_the_specs():
    capabilities = {name: (spec.has_text, spec.needs_teacher, spec.can_lock_vision) for name, spec in METHODS.items()}
    assert capabilities == {"mae": (False, False, False), "clip": (True, False, True), "siglip": (True, False, True),
                            "flip": (True, False, True), "slip": (True, False, False), "rils": (True, False, False),
                            "milan": (False, True, False), "supervised": (False, False, False)}
    assert [name for name, spec in METHODS.items() if spec.needs_scene_labels] == ["supervised"]
    with pytest.raises(ConfigError, match="config key 'method' must be one of mae, clip, siglip, flip, slip, rils, milan, supervised; got 'nope'"):
        method_class("nope")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_trains_saves_loads_evaluates_and_exports(name, tmp_path, request):
    """The smoke test a method joins by being registered: build it, take two steps (the second
    is also the checkpoint), load the run, evaluate one task and export it; the export loads back
    to the same encoder. A method that needs a teacher trains against the shared tiny CLIP run."""
    extra = {"milan.teacher.source": f"langmim:{request.getfixturevalue('clip_run')}"} if method_spec(name).needs_teacher else {}
    run = tmp_path / name
    cfg = load_config(None, tiny_overrides(run, name, steps=2, **extra) + TINY_EVAL)
    pretrain(cfg, log_tensorboard=False)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2

    model = load(run)
    assert type(model) is method_class(name) and model.step == 2
    assert model.has_text == hasattr(model, "text") and model.config.settings == cfg.settings  # its own section round-trips
    result = evaluate(model, ["knn"], model.config.eval, tmp_path / "results", name, log=lambda _: None)["knn"]
    assert result["headline"] == "top1" and 0.0 <= result["metrics"]["top1"] <= 100.0
    exported = load(export(model, "safetensors", tmp_path / "export" / f"{name}.safetensors"))
    images = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(exported.eval().encode_image(images), model.eval().encode_image(images))
