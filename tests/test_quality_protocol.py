"""benchmarks/quality.py: jobs through submitit's local executor, the plan, tasks added to kept
jobs, the dependency order, and the grid's points."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_EVAL, TINY_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
from quality_grid import FLOOR, REGIMES, TEXT_TASKS, Job, Point, plan_jobs  # noqa: E402

TINY_TRAIN = ["train.batch_size=16", "train.warmup_steps=1", "train.log_every=1"]


def grid_args(tmp_path: Path, *more: str) -> list[str]:
    """Two tiny jobs (the floor and CLIP, seed 100, 3 steps) kept under tmp_path, never in the repository."""
    return ["random-init", "clip", "--seeds", "1", "--steps", "", "--num-scenes", "", "--data-steps", "3", "--tasks", "knn",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), *TINY_MODEL, *TINY_TRAIN, *TINY_EVAL, *more]


def plan_lines(capsys, tmp_path: Path, *more: str) -> list[str]:
    quality.main(grid_args(tmp_path, "--plan", *more))
    return capsys.readouterr().out.splitlines()


def test_submitit_local_executor_runs_and_keeps_two_jobs(tmp_path, capsys):
    pytest.importorskip("submitit")
    before = plan_lines(capsys, tmp_path, "--executor", "local")
    assert [line.split()[:4] for line in before[:2]] == [["left", "clean", "steps-3", FLOOR], ["left", "clean", "steps-3", "clip"]]
    assert before[-1].startswith("0 of 2 jobs done")

    quality.main(grid_args(tmp_path, "--executor", "local", "--timeout-min", "20"))
    out = capsys.readouterr().out
    assert "done clean/steps-3/clip/seed-100: train" in out and "FAILED" not in out
    kept = tmp_path / "results" / "quality" / "protocol"
    for folder in (kept / FLOOR / "seed-100", kept / "steps-3" / "clip" / "seed-100"):
        record = json.loads((folder / "job.json").read_text())
        assert record["tasks"] == ["knn"] and record["threads"] == 1
        assert json.loads(next((folder / "results").glob("*_knn_*.json")).read_text())["metrics"]["top1"] > 0
    assert (kept / "steps-3" / "clip" / "seed-100" / "metrics.jsonl").is_file()
    assert len((tmp_path / "results" / "quality.jsonl").read_text().splitlines()) == 2
    submitted = [json.loads(line) for line in (tmp_path / "work" / "submitit" / "submitted.jsonl").read_text().splitlines()]
    assert {s["job"] for s in submitted} == {f"clean/steps-3/{FLOOR}/seed-100", "clean/steps-3/clip/seed-100"}
    assert all(s["executor"] == "local" and s["id"].isdigit() for s in submitted)

    for executor in ("pool", "local", "slurm"):  # the plan reads the kept files, whichever executor ran them
        after = plan_lines(capsys, tmp_path, "--executor", executor)
        assert [line.split()[0] for line in after[:2]] == ["done", "done"]
        assert after[-1] == f"2 of 2 jobs done; left: 0.0 CPU-hours by the kept jobs' seconds (executor: {executor})"
    # a task added later leaves both jobs with only that task to do, priced by the seconds kept
    added = plan_lines(capsys, tmp_path, "--tasks", "knn,retrieval")
    assert all(line.startswith("left") and "(tasks left: retrieval; submitted as local job " in line and line.endswith(" (ENDED))")
               for line in added[:2])
    assert "~? min" in added[0] and added[-1].endswith("and 2 job(s) of a method or task never measured (executor: pool)")

    quality.main(grid_args(tmp_path, "--executor", "local"))  # everything kept: nothing is submitted again
    assert "started" not in capsys.readouterr().out
    assert len((tmp_path / "work" / "submitit" / "submitted.jsonl").read_text().splitlines()) == 2


def test_an_added_task_is_evaluated_alone_and_kept_beside_the_others(tmp_path):
    threads = torch.get_num_threads()
    extra = [*TINY_MODEL, *TINY_TRAIN, *TINY_EVAL]
    job = Job(Point(3), "clip", 100, tasks=("knn",), work_root=tmp_path / "work", results_root=tmp_path / "results")
    try:
        first = quality.run_job(job, extra)
        knn_file = next((job.kept_dir / "results").glob("*_knn_*.json"))
        knn_text = knn_file.read_text()
        checkpoints = sorted(p.name for p in job.work_dir.glob("checkpoint-*.pt"))
        wider = Job(job.point, "clip", 100, tasks=("knn", "retrieval"), work_root=job.work_root, results_root=job.results_root)
        assert wider.missing_tasks() == ["retrieval"] and not wider.done
        second = quality.run_job(wider, extra)
    finally:
        torch.set_num_threads(threads)
    assert first["tasks"] == ["knn"] and second["tasks"] == ["retrieval"] and set(second["metrics"]) == {"retrieval"}
    assert knn_file.read_text() == knn_text and wider.done
    # the finished run is resumed at its last step: no step trained twice, its training seconds kept
    assert sorted(p.name for p in job.work_dir.glob("checkpoint-*.pt")) == checkpoints
    assert [json.loads(line)["step"] for line in (job.work_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    kept = json.loads((job.kept_dir / "job.json").read_text())
    assert kept["tasks"] == ["knn", "retrieval"] and kept["train_seconds"] == first["train_seconds"] > 0
    assert kept["eval_seconds"] == pytest.approx(first["eval_seconds"] + second["eval_seconds"], abs=0.11)
    assert len((tmp_path / "results" / "quality.jsonl").read_text().splitlines()) == 2


def test_a_model_without_a_text_tower_owes_no_text_task(tmp_path):
    job = Job(Point(3), "mae", 100, tasks=("knn", *TEXT_TASKS), results_root=tmp_path)
    (job.kept_dir / "results").mkdir(parents=True)
    (job.kept_dir / "results" / "mae_knn_fashion-mnist.json").write_text(json.dumps({"task": "knn", "metrics": {}, "has_text": False}))
    assert job.missing_tasks() == list(job.tasks)  # not kept until job.json is written
    (job.kept_dir / "job.json").write_text("{}")
    assert job.done


def test_text_tasks_are_the_suites():
    from langmim.eval.suite import TASKS

    assert set(TEXT_TASKS) == {name for name, spec in TASKS.items() if spec.needs_text}


class InstantSubmitter:
    """Finishes every job at once; records, for each job started, the jobs whose results were read by then."""

    log: list[tuple[str, list[str]]] = []

    def __init__(self, *args):
        self.poll_s, self.finished = 0.0, []

    def submit(self, job, extra, pretrain_only):
        InstantSubmitter.log.append((job.method, list(self.finished)))
        finished = self.finished
        return type("Done", (), {"done": lambda _: True, "result": lambda _: finished.append(job.method)})()

    def close(self):
        pass


def test_milan_starts_only_after_its_clip_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "Submitter", InstantSubmitter)
    InstantSubmitter.log = []
    jobs = plan_jobs(["milan", "clip", "mae"], 1, [], [], 800, "web", results_root=tmp_path)
    quality.run_jobs(jobs, [], workers=4)
    started = dict(InstantSubmitter.log)
    assert set(started) == {"clip", "milan", "mae"}
    assert started["clip"] == [] and started["mae"] == []  # both start at once, four workers free
    assert "clip" in started["milan"]  # MILAN only once its teacher has finished


def test_job_round_trips_through_its_command_line_form(tmp_path):
    job = Job(Point(800, 2000, "mismatch-36"), "slip", 102, "web", ("knn", "zeroshot"), tmp_path / "w", tmp_path / "r")
    back = Job.from_json(job.to_json())
    assert back == job and back.work_root == job.work_root and back.results_root == job.results_root
    assert back.work_dir == tmp_path / "w" / "web" / "steps-800-scenes-2000-mismatch-36" / "slip" / "seed-102"


def test_regimes_are_points_of_the_web_world_with_their_caption_settings(tmp_path):
    from langmim.config import load_config

    jobs = plan_jobs(["clip"], 1, [], [], 800, "web", regimes=list(REGIMES))
    assert [j.point.name for j in jobs] == ["steps-800", "steps-800-mismatch-0", "steps-800-mismatch-36", "steps-800-exhaustive"]
    for job in jobs:
        world = load_config("demo", [f"output_dir={tmp_path}", *job.point.overrides(), *job.world_overrides()]).data.web
        expected = {None: 0.168, "mismatch-0": 0.0, "mismatch-36": 0.365, "exhaustive": 0.0}[job.point.regime]
        assert world.mismatch_share + world.boilerplate_share == pytest.approx(expected)
    with pytest.raises(SystemExit, match="--world web"):
        quality.main(["clip", "--regimes", "mismatch-0", "--plan"])
    with pytest.raises(SystemExit, match="choose from mismatch-0"):
        quality.main(["clip", "--world", "web", "--regimes", "mismatch-50", "--plan"])


def keep_synthetic(kept: Path, point: Point, method: str, seed: int, metrics: dict[str, dict[str, float]]) -> None:
    """A kept job as run_job leaves it: job.json and one result JSON per task."""
    folder = kept / point.name / method / f"seed-{seed}"
    (folder / "results").mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"run": method, "seed": seed, "steps": point.steps, "train_seconds": 1.0, "eval_seconds": 1.0}))
    for task, values in metrics.items():
        (folder / "results" / f"{method}_{task}.json").write_text(json.dumps({"task": task, "metrics": values, "has_text": True}))


def test_regime_map_and_claims_table_read_the_verdicts_off_kept_seeds(tmp_path, monkeypatch):
    import quality_tables

    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- regime-map -->\nold\n<!-- /regime-map -->\nafter\n")
    monkeypatch.setattr(quality_tables, "BENCHMARKS_README", readme)
    kept = tmp_path / "protocol-web"
    offsets = {"clip": 0.0, "slip": 5.0, "rils": -5.0, "siglip": 0.0, "flip": -1.0}
    for regime in (None, "mismatch-0"):
        for method, offset in offsets.items():
            for seed, base in zip((100, 101, 102), (30.0, 34.0, 38.0)):
                wobble = {"siglip": (1.0, -1.0, 0.5)[seed - 100]}.get(method, 0.0)  # a level difference: its interval spans 0
                value = base + offset + wobble
                keep_synthetic(kept, Point(800, regime=regime), method, seed,
                               {"zeroshot": {"top1": value}, "retrieval": {"image_to_text_R@1": value}, "linear": {"mean_top1": value}})
    written = quality_tables.regime_map(kept, 800)
    assert [p.name for p in written] == ["regime_map.md", "README.md", "regime_map.png"] and written[2].stat().st_size > 10_000
    table = readme.read_text()
    assert table.startswith("before\n<!-- regime-map -->\n| metric | run | web, 0% | web, 16.8% (CC3M) |") and table.endswith("<!-- /regime-map -->\nafter\n")
    zero_shot = [line for line in table.splitlines() if line.startswith("| zero-shot top-1 |")][0]
    assert zero_shot == "| zero-shot top-1 | clip | 34.0 ± 9.9 | 34.0 ± 9.9 |"
    assert "| | slip − clip | +5.0 ± 0.0 ahead | +5.0 ± 0.0 ahead |" in table
    assert "| | rils − clip | -5.0 ± 0.0 behind | -5.0 ± 0.0 behind |" in table
    assert "| | siglip − clip | +0.2 ± 2.6 level | +0.2 ± 2.6 level |" in table
    assert "| compositional | clip | – | – |" in table  # not evaluated: a dash, not a number

    claims = quality_tables.claims_table(kept, [Point(800)])
    slip_row = [line for line in claims.splitlines() if line.startswith("| SLIP over CLIP")][0]
    assert slip_row.endswith("| zero-shot top-1 (%) | slip − clip: +5.0 ± 0.0 ahead: **yes** |")
    assert "rils − clip: -5.0 ± 0.0 behind: **no (reversed)**" in claims
    assert "flip − clip: -1.0 ± 0.0 behind: **yes** |" in claims  # FLIP's claim is "not ahead"
    assert "| fine-tuned presence mAP, 1% of labels (%) | – |" in claims  # a task no run has


def test_slurm_jobs_are_submitted_with_one_cpu_and_their_state_is_planned(tmp_path, monkeypatch, capsys):
    """SLURM's commands stand in as scripts on the PATH: sbatch records the batch file it is given
    and answers with a job id, sacct reports that job pending."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"srun": "exit 0", "sbatch": f'cp "${{@: -1}}" {tmp_path}/batch.sh; echo "Submitted batch job 4242"',
               "sacct": 'printf "JobID|State|NodeList\\n4242|PENDING|None\\n"'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    args = ["random-init", "--seeds", "1", "--steps", "", "--num-scenes", "", "--data-steps", "3", "--tasks", "knn",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), "--executor", "slurm"]
    with pytest.raises(SystemExit, match="--executor slurm: .*srun"):  # no SLURM here: one line, no traceback
        quality.run_jobs(plan_jobs(["random-init"], 1, [], [], 3, results_root=tmp_path), [], 1, executor="slurm", folder=tmp_path / "s")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    job = plan_jobs([FLOOR], 1, [], [], 3, tasks=("knn",), work_root=tmp_path / "work", results_root=tmp_path / "results")[0]
    submitter = quality.Submitter("slurm", 1, tmp_path / "work" / "submitit", 90, "cpu")
    handle = submitter.submit(job, ["eval.test_size=200"], pretrain_only=False)
    assert handle.job_id == "4242"
    batch = (tmp_path / "batch.sh").read_text()
    for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --partition=cpu", "#SBATCH --time=90", "#SBATCH --ntasks-per-node=1"):
        assert line in batch
    quality.main([*args, "--plan"])
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("left  clean steps-3") and line.endswith("(submitted as slurm job 4242 (PENDING))")


def test_point_names_parse_back_and_regimes_skip_the_runs_that_read_no_caption():
    for point in (Point(800), Point(200, 2000), Point(800, None, "mismatch-36"), Point(800, 2000, "exhaustive")):
        assert Point.from_name(point.name) == point
    assert [Point.from_name(n) for n in ("random-init", "steps-x", "steps-800-mismatch-50", "headline.md")] == [None] * 4
    jobs = plan_jobs(["clip", "mae", "supervised", "random-init"], 1, [], [], 800, "web", regimes=["mismatch-0"])
    assert [(j.point.regime, j.method) for j in jobs] == [(None, FLOOR), (None, "clip"), (None, "mae"), (None, "supervised"), ("mismatch-0", "clip")]


def test_a_job_still_running_from_an_earlier_driver_is_waited_for_not_submitted_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "Submitter", InstantSubmitter)
    InstantSubmitter.log = []
    clip, milan = plan_jobs(["clip", "milan"], 1, [], [], 800, "web", results_root=tmp_path, work_root=tmp_path)
    folder = tmp_path / "submitit"
    folder.mkdir()
    (folder / "submitted.jsonl").write_text(json.dumps({"job": clip.key, "executor": "local", "id": str(os.getpid()), "date": "x"}) + "\n")
    live = {"state": "RUNNING"}
    monkeypatch.setattr(quality, "submission_state", lambda record, folder: live["state"])
    monkeypatch.setattr(quality.time, "sleep", lambda _: live.update(state="ENDED"))  # it ends while the driver waits
    with pytest.raises(SystemExit, match="2 job"):  # it ended without keeping its results; what needs it is dropped
        quality.run_jobs([clip, milan], [], workers=2, executor="local", folder=folder)
    out = capsys.readouterr().out
    assert f"still running: {clip.key} as local job {os.getpid()}" in out
    assert f"FAILED {clip.key}: RuntimeError: submitted earlier as local job" in out and "(dropped 1 that need it)" in out
    assert InstantSubmitter.log == []  # neither the running job nor the one that needs it was submitted


def test_estimates_count_training_only_where_no_checkpoint_is_left(tmp_path):
    from quality_grid import Costs

    costs = Costs(train_per_step={"clip": [1.0], "milan": [2.0]}, task_seconds={("clip", "knn"): [30.0], ("clip", "zeroshot"): [60.0]})
    clip, milan = plan_jobs(["clip", "milan"], 1, [], [], 800, "web", tasks=("knn", "zeroshot"), work_root=tmp_path, results_root=tmp_path)
    assert costs.estimate(clip, ["knn", "zeroshot"]) == 800 + 90
    assert costs.estimate(milan, ["knn", "zeroshot"]) == 1600 + 30  # no text tower: no zero-shot; its teacher is clip's own job
    clip.work_dir.mkdir(parents=True)
    (clip.work_dir / "checkpoint-00000600.pt").write_bytes(b"")
    assert costs.estimate(clip, ["knn"]) == 200 + 30  # resumes at step 600
    assert costs.estimate(Job(Point(800), "flip", 100, "web"), ["knn"]) is None  # never measured


def test_user_mistakes_end_in_one_line(tmp_path):
    for args, message in ((["--tasks", "knn,nope", "--plan"], "unknown task\\(s\\) nope"), (["--workers", "0"], "at least 1"),
                          (["--executor", "slurm", "--work-dir", "/tmp/q"], "local to each node")):
        with pytest.raises(SystemExit, match=message):
            quality.main(["clip", "--results-dir", str(tmp_path), *args])


def test_a_claim_reads_yes_only_where_the_seeds_show_it():
    from quality_tables import PUBLISHED_CLAIMS, reproduces

    ahead_claim, not_ahead_claim = PUBLISHED_CLAIMS[0], PUBLISHED_CLAIMS[-1]
    assert (ahead_claim.expected, not_ahead_claim.expected) == ("ahead", "not ahead")
    readings = {v: (reproduces(ahead_claim, v), reproduces(not_ahead_claim, v)) for v in ("ahead", "level", "behind", "cannot tell")}
    assert readings == {"ahead": ("yes", "no"), "level": ("not shown (level)", "yes"), "behind": ("no (reversed)", "yes"),
                        "cannot tell": ("cannot tell", "cannot tell")}
