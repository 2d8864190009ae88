"""The whole evaluation suite on tiny trained models: every task's JSON, the skips, the report."""
import json

import pytest
from PIL import Image

from conftest import tiny_overrides
from langmim.api import load
from langmim.cli import main
from langmim.config import load_config
from langmim.engine.loop import pretrain
from langmim.eval.suite import TASKS, evaluate

TINY_EVAL = [
    "eval.test_size=200", "eval.probe_train_size=300", "eval.knn_k=[10,20]", "eval.fewshot_shots=[1,2]",
    "eval.fewshot_seeds=2", "eval.retrieval_size=100", "eval.segmentation_train_size=100",
    "eval.segmentation_test_size=50", "eval.segmentation_epochs=2",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for method in ("clip", "mae"):
        run = tmp_path_factory.mktemp(method)
        pretrain(load_config(None, tiny_overrides(run, method, steps=2) + TINY_EVAL), log_tensorboard=False)
        out[method] = run
    return out


def test_every_task_writes_its_json(runs):
    model = load(runs["clip"])
    results = evaluate(model, list(TASKS), model.config.eval, runs["clip"] / "results", "clip", log=lambda _: None)
    assert set(results) == set(TASKS)
    files = {p.name for p in (runs["clip"] / "results").glob("*.json")}
    assert files == {
        "clip_zeroshot_fashion-mnist.json", "clip_knn_fashion-mnist.json", "clip_linear_fashion-mnist.json",
        "clip_fewshot_fashion-mnist.json", "clip_retrieval_fashion-scenes-captions.json",
        "clip_segmentation_fashion-scenes-masks.json",
    }
    for name in files:
        result = json.loads((runs["clip"] / "results" / name).read_text())
        assert result["checkpoint"].endswith(".pt") and result["config"]["method"] == "clip"
        assert {"eval", "train"} <= set(result["seeds"]) and result["split_sizes"]
    fewshot = results["fewshot"]
    assert set(fewshot["details"]["mean"]) == {"1", "2"} and len(fewshot["details"]["mean"]["1"]["logistic"]["runs"]) == 2
    assert results["retrieval"]["split_sizes"]["test"] == 100
    assert 0 <= results["retrieval"]["metrics"]["text_to_image_R@10"] <= 100
    seg = results["segmentation"]
    assert seg["split_sizes"] == {"train": 100, "test": 50} and 0 < seg["metrics"]["miou"] <= 100
    assert (runs["clip"] / "results" / "clip_segmentation_examples.png").is_file()


def test_text_tasks_are_skipped_for_mae_and_the_report_compiles(runs, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(runs["mae"]), "--tasks", "zeroshot,retrieval,knn,fewshot"]) == 0
    out = capsys.readouterr().out
    assert "zeroshot skipped" in out and "retrieval skipped" in out
    assert main(["eval", "--checkpoint", str(runs["clip"]), "--tasks", "zeroshot,knn,fewshot,retrieval"]) == 0

    assert main(["report", str(runs["clip"]), str(runs["mae"]), "--output", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "n/a, no text tower" in report and "few-shot 1-shot" in report and "retrieval R@1" in report
    header = report.splitlines()[4]
    assert "clip" in header and "mae" in header
    for png in ("fewshot.png", "retrieval.png"):
        with Image.open(tmp_path / "report" / png) as im:
            assert im.size[0] > 400


def test_bad_tasks_and_empty_runs_are_clear_errors(runs, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(runs["mae"]), "--tasks", "knn,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no result JSONs" in capsys.readouterr().err
