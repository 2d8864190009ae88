"""The whole evaluation suite on tiny trained models: every task's JSON, the skips, the report."""
import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_EVAL, bomb_png, tiny_overrides
from langmim.api import load
from langmim.cli import main
from langmim.config import load_config
from langmim.engine.loop import pretrain
from langmim.errors import DataError
from langmim.eval.suite import TASKS, evaluate
from langmim.report import write_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clip_run):
    run = tmp_path_factory.mktemp("mae")
    pretrain(load_config(None, tiny_overrides(run, "mae", steps=2) + TINY_EVAL), log_tensorboard=False)
    return {"clip": clip_run, "mae": run}


def test_every_task_writes_its_json(runs):
    model = load(runs["clip"])
    results = evaluate(model, list(TASKS), model.config.eval, runs["clip"] / "results", "clip", log=lambda _: None)
    assert set(results) == set(TASKS)
    files = {p.name for p in (runs["clip"] / "results").glob("*.json")}
    assert files == {
        "clip_zeroshot_fashion-mnist.json", "clip_knn_fashion-mnist.json", "clip_linear_fashion-mnist.json",
        "clip_fewshot_fashion-mnist.json", "clip_finetune_fashion-mnist.json", "clip_retrieval_fashion-scenes-captions.json",
        "clip_segmentation_fashion-scenes-masks.json", "clip_presence_fashion-scenes.json", "clip_cells_fashion-scenes.json",
        "clip_binding_fashion-scenes.json", "clip_counting_fashion-scenes.json", "clip_compositional_fashion-scenes-compositional.json",
        "clip_detection_fashion-scenes-boxes.json", "clip_shift_fashion-mnist-shifted.json",
        "clip_concepts_fashion-mnist-coloured.json", "clip_finetune_lowshot_fashion-scenes.json",
        "clip_finetune_segmentation_fashion-scenes-masks.json", "clip_finetune_detection_fashion-scenes-boxes.json",
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
    assert seg["split_sizes"] == {"train": 120, "test": 50} and 0 < seg["metrics"]["miou"] <= 100
    items = [v for k, v in seg["details"]["per_class_iou"].items() if k != "background" and v is not None]
    assert seg["metrics"]["foreground_miou"] == pytest.approx(sum(items) / len(items))
    assert results["presence"]["split_sizes"] == {"train": 120, "test": 50}
    assert set(results["presence"]["details"]["mean"]["lowshot"]) == {"1", "4"}
    assert results["cells"]["split_sizes"] == {"train_cells": 9 * 120, "test_cells": 9 * 50}
    assert results["compositional"]["split_sizes"] == {"test": 50} and "garment_acc" in results["compositional"]["metrics"]
    assert {"ap", "ap50", "ap75"} <= set(results["detection"]["metrics"])
    concepts = results["concepts"]
    assert concepts["split_sizes"]["test"] == 200 and concepts["details"]["pretraining_world"] == "clean"
    assert len(concepts["details"]["head_concepts"]) == 20 and 0 <= concepts["metrics"]["tail_top1"] <= 100
    shift = results["shift"]["metrics"]
    assert {"linear_sketch", "zeroshot_inverted", "linear_clean", "zeroshot_shifted_mean"} <= set(shift)
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
    """Two classes a linear probe separates (bright left half vs bright right half), and a corrupt
    file, a decompression bomb and a truncated JPEG that must be skipped, counted and named."""
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
    (root / "train" / "left_bright" / "bomb.png").write_bytes(bomb_png())
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (root / "train" / "right_bright" / "half.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # passes verify()


def test_image_folder_and_caption_table(runs, tmp_path, capsys):
    write_image_folder(tmp_path / "folder")
    model = load(runs["clip"])
    cfg = model.config.eval
    results = evaluate(model, ["zeroshot", "knn", "linear", "fewshot"], cfg, tmp_path / "res", "clip",
                       dataset=str(tmp_path / "folder"))
    out = capsys.readouterr().out
    assert "skipped 3 unusable image(s)" in out
    assert all(f"{name}: {kind}" in out for name, kind in (("broken.png", "unreadable_image"), ("bomb.png", "oversized_image"),
                                                          ("half.jpg", "truncated_image")))
    assert results["knn"]["dataset"] == "folder" and results["knn"]["split_sizes"] == {"test": 16, "train": 16}
    assert results["linear"]["metrics"]["top1"] == 100.0  # planted: halves of the image differ
    assert results["zeroshot"]["details"]["classnames"] == ["left bright", "right bright"]
    assert (tmp_path / "res" / "clip_knn_folder.json").is_file()

    rows = ["filepath,caption"] + [f"folder/val/left_bright/{i}.png,a bright left half number {i}" for i in range(6)]
    rows += ["folder/val/missing.png,gone", "folder/val/right_bright/0.png,"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    result = evaluate(model, ["retrieval"], cfg, None, "clip", dataset=str(tmp_path / "pairs.csv"))["retrieval"]
    assert result["dataset"] == "pairs" and result["split_sizes"] == {"test": 6}
    assert "skipped 1 unusable image(s)" in capsys.readouterr().out

    tight = dataclasses.replace(cfg, max_image_pixels=100)  # eval.max_image_pixels: every image here is larger
    with pytest.raises(DataError, match="has no readable image"):
        evaluate(model, ["retrieval"], tight, None, "clip", dataset=str(tmp_path / "pairs.csv"))
    assert "0.png: oversized_image" in capsys.readouterr().out


def test_features_are_cached_per_checkpoint_and_dataset(runs, tmp_path, monkeypatch):
    from langmim.eval import context

    model = load(runs["mae"])
    calls = []
    real = context.extract_features
    monkeypatch.setattr(context, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate(model, ["knn"], model.config.eval, tmp_path, "mae", log=lambda _: None)
    assert len(calls) == 2  # test and train features
    second = evaluate(model, ["knn"], model.config.eval, tmp_path, "mae", log=lambda _: None)
    assert len(calls) == 2 and second["knn"]["metrics"] == first["knn"]["metrics"]
    model.config.eval.test_size = 150  # other rows: a new cache entry
    evaluate(model, ["knn"], model.config.eval, tmp_path, "mae", log=lambda _: None)
    assert len(calls) == 3


def test_evaluation_scenes_and_renders_use_test_split_items_only(runs, monkeypatch):
    """Every data set a scene or shift task scores on is built from the test split; heads fit on
    train-split scenes only."""
    from langmim.data import fashion_mnist
    from langmim.data import scenes as scene_data
    from langmim.eval import context, shift

    built = []
    real_scenes, real_shifted = context.FashionScenes, shift.FashionMNISTShifted
    monkeypatch.setattr(context, "FashionScenes", lambda split, *a, **k: built.append(("scenes", split, k["length"])) or real_scenes(split, *a, **k))
    monkeypatch.setattr(shift, "FashionMNISTShifted",
                        lambda split, style, *a, **k: built.append((style, split, len(k["indices"]))) or real_shifted(split, style, *a, **k))
    model = load(runs["clip"])
    scene_tasks = [t for t, spec in TASKS.items() if spec.dataset and spec.dataset != "fashion-scenes-captions"]
    evaluate(model, scene_tasks + ["retrieval"], model.config.eval, None, "clip", log=lambda _: None)
    pool = model.config.eval.finetune_lowshot_scenes  # finetune_lowshot's labelled pool, of train items too
    assert {b for b in built if b[0] == "scenes"} == {("scenes", "train", 120), ("scenes", "train", pool), ("scenes", "test", 50),
                                                      ("scenes", "test", 100)}
    shifted = [b for b in built if b[0] != "scenes"]
    assert {b[0] for b in shifted} == {"sketch", "inverted", "small-offcentre", "noisy", "blurred"}
    assert all(split == "test" and n == 40 for _, split, n in shifted)
    test_items = fashion_mnist.load_fashion_mnist("test")[1]
    sample = real_scenes("test", 32, seed=scene_data.EVAL_SCENE_SEED, length=5)[3]
    assert torch.equal(sample["labels"], torch.from_numpy(test_items[sample["item_indices"].numpy()]).long())


def test_report_margins_over_a_floor_column():
    from langmim.report import comparison_table

    def results(zeroshot, presence):
        return {"zeroshot": {"metrics": {"top1": zeroshot}}, "presence": {"metrics": {"mean_map": presence}}}

    table = comparison_table({"rils": {0: results(65.0, 45.5)}, "random-init": {0: results(10.0, 39.0)}}, floor="random-init")
    header, _, zeroshot, presence = table.splitlines()
    assert header == "| metric | rils | random-init | rils minus random-init |"
    assert zeroshot.endswith("| 65.00 | 10.00 | +55.00 |") and presence.endswith("| 45.50 | 39.00 | +6.50 |")
    assert "minus" not in comparison_table({"rils": {0: results(65.0, 45.5)}}, floor="random-init")


def test_results_are_filed_by_run_name_and_report_columns_carry_the_step(runs, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["eval", "--checkpoint", str(runs["clip"]), "--tasks", "knn,linear", "--output", str(out)]) == 0
    name = runs["clip"].name  # the run directory, whatever the method
    assert {p.name for p in out.glob("*.json")} == {f"{name}_knn_fashion-mnist.json", f"{name}_linear_fashion-mnist.json"}
    report = write_report([out], tmp_path / "report")
    assert f"| {name} (step 3) |" in report.read_text()
    linear = out / f"{name}_linear_fashion-mnist.json"
    linear.write_text(linear.read_text().replace('"step": 3', '"step": 1'))  # as if re-evaluated on another checkpoint
    text = write_report([out], tmp_path / "report").read_text()
    assert f"{name} (steps 1, 3)" in text and "mixes results of checkpoint steps 1, 3" in text
    assert "warning" in capsys.readouterr().out


def test_clip_benchmark_results_merge_with_published_ones(runs, tmp_path):
    """langmim writes CLIP_benchmark's schema beside its own; the real `clip_benchmark build` merges
    it with a CLIP_benchmark result file, and `langmim report` reads that file too."""
    import csv
    import subprocess
    import sys

    pytest.importorskip("clip_benchmark")
    model = load(runs["clip"])
    out = tmp_path / "res"
    ours = evaluate(model, ["zeroshot", "retrieval", "linear", "knn"], model.config.eval, out, "clip-tiny", log=lambda _: None)
    files = sorted((out / "clip_benchmark").glob("*.json"))
    assert [json.loads(f.read_text())["task"] for f in files] == ["linear_probe", "zeroshot_classification", "zeroshot_retrieval"]
    zeroshot = json.loads((out / "clip_benchmark" / f"fashion-mnist_{Path(model.checkpoint_path).stem}_clip-tiny_en_zeroshot_classification.json").read_text())
    assert set(zeroshot) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert zeroshot["metrics"]["acc1"] == pytest.approx(ours["zeroshot"]["metrics"]["top1"] / 100)  # fractions, as CLIP_benchmark
    retrieval = json.loads(next(f for f in files if f.name.endswith("retrieval.json")).read_text())["metrics"]
    assert retrieval["image_retrieval_recall@5"] == pytest.approx(ours["retrieval"]["metrics"]["text_to_image_R@5"] / 100)

    published = tmp_path / "published" / "cifar10_openai_ViT-B-32_en_zeroshot_classification.json"
    published.parent.mkdir()
    published.write_text(json.dumps({"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
                                     "metrics": {"acc1": 0.8983, "acc5": 0.9954, "mean_per_class_recall": 0.8983}, "language": "en"}))
    table = tmp_path / "benchmark.csv"
    result = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", "build", *map(str, files), str(published), "--output", str(table)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(table.open()))
    assert {r["model"] for r in rows} == {"clip-tiny", "ViT-B-32"} and len(rows) == 4
    ours_row = next(r for r in rows if r["task"] == "zeroshot_classification" and r["model"] == "clip-tiny")
    assert float(ours_row["acc1"]) == pytest.approx(zeroshot["metrics"]["acc1"])
    report = write_report([out / "clip_benchmark", published.parent], tmp_path / "report").read_text()
    assert "ViT-B-32 openai" in report and "| 89.83 |" in report.replace(" | n/a", "")
