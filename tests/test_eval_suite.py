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
    "eval.segmentation_test_size=50", "eval.segmentation_epochs=2", "eval.finetune_train_size=256",
    "eval.finetune_epochs=1",
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
        "clip_fewshot_fashion-mnist.json", "clip_finetune_fashion-mnist.json", "clip_retrieval_fashion-scenes-captions.json",
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


def write_image_folder(root, per_class=8):
    """Two classes a linear probe separates (bright left half vs bright right half), and one
    corrupt file that must be skipped and counted."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, side in (("left_bright", 0), ("right_bright", 1)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 40, (40, 40, 3), dtype=np.uint8)
                pixels[:, side * 20:(side + 1) * 20] += 200
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (root / "train" / "left_bright" / "broken.png").write_bytes(b"not a png")


def test_image_folder_and_caption_table(runs, tmp_path, capsys):
    write_image_folder(tmp_path / "folder")
    model = load(runs["clip"])
    cfg = model.config.eval
    results = evaluate(model, ["zeroshot", "knn", "linear", "fewshot"], cfg, tmp_path / "res", "clip",
                       dataset=str(tmp_path / "folder"))
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    assert results["knn"]["dataset"] == "folder" and results["knn"]["split_sizes"] == {"test": 16, "train": 16}
    assert results["linear"]["metrics"]["top1"] == 100.0  # planted: halves of the image differ
    assert results["zeroshot"]["details"]["classnames"] == ["left bright", "right bright"]
    assert (tmp_path / "res" / "clip_knn_folder.json").is_file()

    rows = ["filepath,caption"] + [f"folder/val/left_bright/{i}.png,a bright left half number {i}" for i in range(6)]
    rows += ["folder/val/missing.png,gone", "folder/val/right_bright/0.png,"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    result = evaluate(model, ["retrieval"], cfg, None, "clip", dataset=str(tmp_path / "pairs.csv"))["retrieval"]
    assert result["dataset"] == "pairs" and result["split_sizes"] == {"test": 6}
    assert "skipped 1 unreadable image" in capsys.readouterr().out


def test_features_are_cached_per_checkpoint_and_dataset(runs, tmp_path, monkeypatch):
    from langmim.eval import suite

    model = load(runs["mae"])
    calls = []
    real = suite.extract_features
    monkeypatch.setattr(suite, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate(model, ["knn"], model.config.eval, tmp_path, "mae", log=lambda _: None)
    assert len(calls) == 2  # test and train features
    second = evaluate(model, ["knn"], model.config.eval, tmp_path, "mae", log=lambda _: None)
    assert len(calls) == 2 and second["knn"]["metrics"] == first["knn"]["metrics"]
    model.config.eval.test_size = 150  # other rows: a new cache entry
    evaluate(model, ["knn"], model.config.eval, tmp_path, "mae", log=lambda _: None)
    assert len(calls) == 3
