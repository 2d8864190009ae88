"""`langmim report` over seeds: mean +- interval cells, margins over a floor, shares of the
floor-to-ceiling gap and paired verdicts; single-run result files read as they always did."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from langmim.cli import main
from langmim.report import TABLE_ROWS, write_report

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "quality"
T_975_DOF2 = 4.302653  # Student-t 97.5% quantile, 2 degrees of freedom (three seeds)
KNN, LINEAR = "k-NN top-1, k=20, patch mean (%)", "linear probe top-1, patch mean (%)"


def write_run(results_dir: Path, model: str, train_seed: int | None, knn: float, linear: float, step: int | None = 800) -> Path:
    """A run's results as `langmim eval` writes them (the schema of benchmarks/results/quality/steps-800/clip/results)."""
    results_dir.mkdir(parents=True)
    for task, key, value in (("knn", "mean_top1_k20", knn), ("linear", "mean_top1", linear)):
        result = {
            "metrics": {key: value, "top1": value}, "details": {}, "split_sizes": {"test": 10000, "train": 20000},
            "dataset": "fashion-mnist", "model": model, "task": task, "checkpoint": None if step is None else f"/runs/{model}/checkpoint.pt",
            "step": step, "has_text": model != "supervised", "config": {"method": model, "train": {"seed": train_seed}},
            "seeds": {"eval": 0, "train": train_seed}, "seconds": 1.0,
        }
        (results_dir / f"{model}_{task}_fashion-mnist.json").write_text(json.dumps(result))
    return results_dir


@pytest.fixture
def seed_runs(tmp_path) -> list[Path]:
    """Three seeds each of clip, rils and a supervised ceiling, one random-init floor run. rils's
    seed dirs are listed out of order, so pairing by position instead of seed would show, and its
    results are filed under the seed folder's name, as `langmim eval --checkpoint runs/rils/seed-0`
    does; the supervised runs are told apart by the train seed their results record."""
    clip = [write_run(tmp_path / "clip" / f"seed-{k}" / "results", "clip", k, knn, lin)
            for k, (knn, lin) in enumerate([(80.0, 80.0), (81.0, 82.0), (82.0, 81.0)])]
    rils = [write_run(tmp_path / "rils" / f"seed-{k}" / "results", f"seed-{k}", k, knn, lin)
            for k, (knn, lin) in [(2, (83.0, 81.5)), (0, (81.0, 81.0)), (1, (82.5, 81.0))]]
    supervised = [write_run(tmp_path / "supervised" / name, "supervised", k, 90.0 + k, 75.0) for k, name in enumerate("abc")]
    floor = write_run(tmp_path / "random-init" / "results", "random-init", 0, 70.0, 75.0, step=None)
    return clip + rils + [floor] + supervised


def table(report: Path) -> dict[str, dict[str, str]]:
    """The report's table as {metric: {column heading: cell}}."""
    rows = [line.strip("|").split(" | ") for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0]]
    return {row[0].strip(): dict(zip(header[1:], (c.strip() for c in row[1:]))) for row in rows[1:]}


def test_seed_report_aggregates_seeds_and_prints_margins_shares_and_verdicts(seed_runs, tmp_path, capsys):
    argv = ["report", *map(str, seed_runs), "--seeds", "--floor", "random-init", "--ceiling", "supervised",
            "--compare", "rils:clip, clip:random-init", "--output", str(tmp_path / "report")]
    assert main(argv) == 0, capsys.readouterr().err
    rows = table(tmp_path / "report" / "report.md")
    knn, linear = rows[KNN], rows[LINEAR]
    assert list(knn)[:4] == ["clip (step 800)", "rils (step 800)", "random-init", "supervised (step 800)"]
    assert knn["clip (step 800)"] == f"81.00 ± {T_975_DOF2 / math.sqrt(3):.2f} (n=3)"  # std 1 over three seeds
    assert knn["random-init"] == "70.00" and knn["supervised (step 800)"] == f"91.00 ± {T_975_DOF2 / math.sqrt(3):.2f} (n=3)"
    assert knn["clip (step 800) minus random-init"] == "+11.00" and knn["rils (step 800) minus random-init"] == "+12.17"
    assert knn["clip (step 800) share of random-init to supervised (step 800) gap"] == "52%"  # 11 of the 21 points
    assert knn["rils (step 800) share of random-init to supervised (step 800) gap"] == "58%"
    assert "supervised (step 800) share of random-init to supervised (step 800) gap" not in knn
    assert linear["clip (step 800) share of random-init to supervised (step 800) gap"] == "n/a"  # floor and ceiling both 75: no gap
    # rils - clip per seed: knn 1.0, 1.5, 1.0 (ahead); linear 1.0, -1.0, 0.5 (level)
    sd = math.sqrt(((1 - 7 / 6) ** 2 * 2 + (1.5 - 7 / 6) ** 2) / 2)
    assert knn["rils (step 800) vs clip (step 800)"] == f"+1.17 ± {T_975_DOF2 * sd / math.sqrt(3):.2f} (n=3), ahead"
    assert linear["rils (step 800) vs clip (step 800)"].endswith("(n=3), level")
    # against the one-run floor: the one-sample interval of clip_k - 70 = 10, 11, 12
    assert knn["clip (step 800) vs random-init"] == f"+11.00 ± {T_975_DOF2 / math.sqrt(3):.2f} (n=3), ahead"
    assert "95% Student-t interval" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")


def test_without_seeds_each_run_keeps_its_own_column(seed_runs, tmp_path):
    rows = table(write_report(seed_runs[:3], tmp_path / "report", compare=[("clip", "clip (seed-1)")]))
    assert rows[KNN]["clip (step 800)"] == "80.00" and rows[KNN]["clip (seed-1) (step 800)"] == "81.00"
    assert rows[KNN]["clip (step 800) vs clip (seed-1) (step 800)"] == "-1.00, cannot tell"  # one pair


def test_seed_report_errors_name_the_runs_and_models(seed_runs, tmp_path, capsys):
    twice = write_run(tmp_path / "again" / "seed-0", "clip", 0, 1.0, 1.0)
    out = ["--output", str(tmp_path / "report")]
    cases = [
        (["report", str(seed_runs[0]), str(twice), "--seeds", *out], f"'{twice}' both hold seed 0 of model 'clip'"),
        (["report", *map(str, seed_runs), "--seeds", "--compare", "rils:mea", *out], "--compare rils:mea: no column 'mea'"),
        (["report", str(seed_runs[0]), "--compare", "rils", *out], "--compare takes MODEL:MODEL pairs"),
        (["report", str(seed_runs[0]), "--ceiling", "supervised", *out], "a ceiling ('supervised') needs a floor"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        assert words in capsys.readouterr().err, argv
    unseeded = [write_run(tmp_path / name / "results", "ext", None, 1.0, 1.0) for name in ("one", "two")]
    assert main(["report", *map(str, unseeded), "--seeds", *out]) == 2  # no seed recorded: both count as seed 0
    assert "both hold seed 0 of model 'ext'; put each seed's run in its own seed-K directory" in capsys.readouterr().err
    mixed = write_run(tmp_path / "mixed" / "results", "ext", 1, 1.0, 1.0)
    linear = mixed / "ext_linear_fashion-mnist.json"
    linear.write_text(linear.read_text().replace('"train": 1}, "seconds"', '"train": 2}, "seconds"'))
    assert main(["report", str(mixed), "--seeds", *out]) == 2
    assert f"the results in '{mixed}' record train seeds 1, 2" in capsys.readouterr().err
    assert main(["report", str(seed_runs[0]), "--floor", "random-init", *out]) == 0  # a missing floor is warned about
    assert "no column 'random-init' for the floor" in capsys.readouterr().out


def test_single_run_result_files_read_as_before(tmp_path):
    """The kept quality results (one run per method, no seed directories) give the table they
    always did: each cell the file's value, margins the plain difference; --seeds changes nothing."""
    runs = sorted((QUALITY / "steps-800").glob("*/results"))
    kept = {run.parent.name: {json.loads(p.read_text())["task"]: json.loads(p.read_text())["metrics"] for p in run.glob("*.json")} for run in runs}
    assert {"clip", "rils", "mae", "milan", "random-init"} <= set(kept)
    report = write_report(runs, tmp_path / "plain", floor="random-init")
    rows = table(report)
    assert report.read_text(encoding="utf-8") == write_report(runs, tmp_path / "seeds", floor="random-init", seeds=True).read_text(encoding="utf-8")
    heading = {name: name if name == "random-init" else f"{name} (step 800)" for name in kept}
    checked = 0
    for label, task, key in TABLE_ROWS:
        floor = kept["random-init"].get(task, {}).get(key)
        for name, metrics in kept.items():
            value = metrics.get(task, {}).get(key)
            if value is not None:
                assert rows[label][heading[name]] == f"{value:.2f}", (label, name)
                checked += 1
            if name != "random-init" and None not in (value, floor):
                assert rows[label][f"{heading[name]} minus random-init"] == f"{value - floor:+.2f}", (label, name)
    assert checked > 50 and rows["zero-shot top-1 (%)"]["mae (step 800)"] == "n/a, no text tower"
    runs_1600 = sorted((QUALITY / "steps-1600").glob("*/results"))
    assert table(write_report(runs_1600, tmp_path / "1600")) == table(write_report(runs_1600, tmp_path / "1600s", seeds=True))
