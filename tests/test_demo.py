"""The demo end to end on a tiny model: checkpoints, result JSONs, report and figures."""
import json

from PIL import Image

from conftest import tiny_overrides
from langmim.demo import run_demo

SMALL_EVAL = ["eval.test_size=300", "eval.probe_train_size=400", "eval.knn_k=[10,20]", "eval.scene_train_size=120", "eval.scene_test_size=40",
              "eval.detection_epochs=2", "eval.segmentation_epochs=2", "eval.shift_test_size=40", "eval.fewshot_seeds=2"]


def test_demo_writes_report_results_and_figures(tmp_path):
    run = tmp_path / "demo"
    run_demo(tiny_overrides(run, "rils", steps=3) + SMALL_EVAL)
    report = (run / "report.md").read_text()
    assert "random init" in report and "zero-shot top-1" in report
    for row in ("scene presence mAP", "garment per occupied cell", "compositional zero-shot", "detection AP50", "segmentation mIoU", "shifted renders"):
        assert row in report
    for png in ("loss_curves.png", "patch_classes.png"):
        with Image.open(run / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    results = {p.name: json.loads(p.read_text()) for p in (run / "results").glob("*.json")}
    assert {"demo_zeroshot_fashion-mnist.json", "random-init_linear_fashion-mnist.json"} <= set(results)  # by run name
    zs = results["demo_zeroshot_fashion-mnist.json"]
    assert zs["task"] == "zeroshot" and zs["split_sizes"]["test"] == 300 and zs["checkpoint"].endswith(".pt")
    correct = zs["metrics"]["top1"] * 300 / 100  # a share of 300 test images, as written
    assert abs(correct - round(correct)) < 1e-6
    assert f"| zero-shot top-1 (%) | {zs['metrics']['top1']:.2f} |" in report  # the report shows this result
    # a second call finds the finished run and only re-evaluates
    mtime = next(run.glob("checkpoint-*.pt")).stat().st_mtime_ns
    run_demo(tiny_overrides(run, "rils", steps=3) + SMALL_EVAL)
    assert next(run.glob("checkpoint-*.pt")).stat().st_mtime_ns == mtime


def test_mae_evaluation_skips_zero_shot_with_a_note(tmp_path, capsys):
    from langmim.api import load
    from langmim.config import load_config
    from langmim.engine.loop import pretrain
    from langmim.eval.suite import evaluate

    cfg = load_config(None, tiny_overrides(tmp_path, "mae", steps=1) + SMALL_EVAL)
    pretrain(cfg, log_tensorboard=False)
    model = load(tmp_path)
    results = evaluate(model, ["zeroshot", "knn"], cfg.eval, tmp_path / "results", "mae")
    assert set(results) == {"knn"}
    assert "no text tower" in capsys.readouterr().out
