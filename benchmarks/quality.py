"""The quality protocol: every method pre-trained with K seeds on fashion-scenes with the same
encoder and budget, beside a random-init floor and a supervised ceiling, over a budget sweep
(unlimited scenes), a data-limited sweep (a fixed set of N scenes seen in epochs) and, on the web
world, a map of caption regimes; then the evaluation suite on each run; tables carry mean +- 95%
interval over seeds and paired verdicts.

    python benchmarks/quality.py [METHOD ...] [--seeds 3] [--steps 200,800,3200]
        [--num-scenes 2000,10000] [--data-steps 800] [--regimes ...] [--tasks ...] [--workers 2] [key=value ...]
    python benchmarks/quality.py --plan        # the jobs, done and left, with the CPU-hours left, without running them
    python benchmarks/quality.py --summarize   # tables and figures from the kept results
    python benchmarks/quality.py --world web --steps 800 --num-scenes '' clip slip rils mae milan supervised random-init
                                               # the first look: the same protocol pre-trained on the web world
    python benchmarks/quality.py --executor slurm --slurm-partition cpu --workers 64 ...
                                               # each job a SLURM job through submitit (--executor local: on this machine)

METHOD is any of clip, rils, mae, milan, siglip, flip, slip, supervised, random-init (default: all). A job is one
(point, method, seed): pre-train (resuming an interrupted run), then evaluate the tasks it has no kept
result for; jobs already kept on every task are skipped, so the protocol runs across sessions and
machines in pieces, and a task added later (``--tasks headline,finetune``) evaluates only what is
missing. Seed K sets ``train.seed=K`` (K from 100 on: the evaluation draws its scenes of train-split
items with seed 1, which a pre-training seed must not repeat): the scenes drawn (and the fixed set of a
data-limited point), their order, the initialisation and the masks; the random-init floor of seed K is
that seed's initialisation.
MILAN distils the CLIP run of its own point and seed, and starts after it. ``--world web`` pre-trains on
the web world (``data.world=web``) with its encoder (``model.arch=demo_p8``) and keeps its runs apart
(benchmarks/results/quality/protocol-web/); every run of either world is evaluated on the same data.
``--regimes`` adds points of the web world with other caption noise (quality_grid.REGIMES).
``--pretrain-only`` pre-trains the jobs left and stops. ``--workers`` jobs run at a time, each on one
torch thread: in a local process pool (``--executor pool``, the default), or as submitit jobs
(``local`` or ``slurm``; their logs and the ids submitted are in WORK_DIR/submitit, and ``--plan``
shows each submitted job's id and state). The driver keeps the dependency order and must run until the
grid ends; a driver stopped and started again skips what is kept and resumes what is not.

Checkpoints go to /tmp/langmim_quality/[WORLD/]POINT/METHOD/seed-K (``--work-dir``); kept in the
repository (``--results-dir``) are each run's training log, merged config and result JSONs
(results/quality/protocol[-web]/POINT/METHOD/seed-K/), one line per evaluation in
results/quality.jsonl, and the summary tables and figures.

Optimiser settings follow each family's preset: CLIP and RILS use the demo's (lr 5e-4, betas
0.9/0.98, open_clip's), MAE, MILAN and the supervised ceiling the mae_demo and milan_demo presets'
(lr 1e-3, betas 0.9/0.95). Precision is the presets' ``auto``: bf16 autocast where the CPU has native bf16.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from quality_grid import FINETUNE_TASKS, FLOOR, HEADLINE_TASKS, REGIMES, RUNS, WORK_DIR, WORLDS, Costs, Job, build_config, kept_points, kept_results, plan_jobs
from results_log import RESULTS_DIR, append_result, cpu_name

EXECUTORS = ("pool", "local", "slurm")


def add_train_seconds(work_dir: Path, seconds: float) -> float:
    """The run's training seconds over all its invocations (an interrupted run resumes in another)."""
    path = work_dir / "train_seconds.txt"
    total = (float(path.read_text()) if path.is_file() else 0.0) + seconds
    path.write_text(f"{total:.1f}\n")
    return total


def run_job(job: Job, extra: list[str], pretrain_only: bool = False) -> dict | None:
    """Pre-train (resuming; a kept run whose checkpoint is gone is trained again, to the same weights)
    and evaluate one job's missing tasks in this process on one torch thread; keep its files. With
    ``pretrain_only``, stop after pre-training (the evaluation comes with a later invocation)."""
    import torch

    from langmim import __version__
    from langmim.api import load
    from langmim.demo import random_init_model
    from langmim.engine.loop import pretrain
    from langmim.eval.suite import evaluate

    torch.set_num_threads(1)
    cfg, preset = build_config(job, extra)
    previous = json.loads((job.kept_dir / "job.json").read_text()) if job.kept else None
    tasks = job.missing_tasks()
    if previous is not None and not tasks:  # kept on every task meanwhile (another driver ran it)
        return None
    train_s = 0.0
    need = job.needs()
    if need is not None:  # its checkpoint may be gone with /tmp: training it again gives the same weights
        pretrain(build_config(need, extra)[0], resume="latest", log_tensorboard=False)
    if job.method != FLOOR:
        start = time.perf_counter()
        try:
            pretrain(cfg, resume="latest", log_tensorboard=False)
        finally:  # a run stopped by a signal counts its seconds too: the invocation that resumes it adds its own
            train_s = add_train_seconds(job.work_dir, time.perf_counter() - start)
    if pretrain_only:
        return None
    model = random_init_model(cfg) if job.method == FLOOR else load(job.work_dir)
    results_dir = job.work_dir / "results"
    shutil.rmtree(results_dir, ignore_errors=True)
    start = time.perf_counter()
    results = evaluate(model, tasks, cfg.eval, results_dir, job.method, cfg.data.root, log=lambda _: None)
    eval_s = time.perf_counter() - start
    if previous is None:
        shutil.rmtree(job.kept_dir, ignore_errors=True)
        (job.kept_dir / "results").mkdir(parents=True)
        if job.method != FLOOR:
            for log in ("metrics.jsonl", "config.yaml"):
                shutil.copy(job.work_dir / log, job.kept_dir / log)
    for result in results_dir.glob("*.json"):
        shutil.copy(result, job.kept_dir / "results" / result.name)
    record = {
        "date": date.today().isoformat(), "world": job.world, "point": job.point.name, "run": job.method, "seed": job.seed,
        "preset": preset, "overrides": [*job.point.overrides(), *job.world_overrides(), *extra], "steps": 0 if job.method == FLOOR else job.point.steps,
        "num_scenes": job.point.num_scenes, "regime": job.point.regime, "batch_size": cfg.train.batch_size,
        "images_seen": 0 if job.method == FLOOR else job.point.steps * cfg.train.batch_size, "precision": cfg.train.precision,
        "tasks": list(results), "train_seconds": round(train_s, 1) if previous is None else previous["train_seconds"], "eval_seconds": round(eval_s, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "langmim": __version__, "machine": platform.machine(), "cpu": cpu_name(),
        "metrics": {task: {k: round(v, 2) for k, v in r["metrics"].items() if isinstance(v, (int, float))} for task, r in results.items()},
    }
    # the job's totals: every task kept (read back from its results), every evaluation's seconds
    kept = {k: v for k, v in record.items() if k != "metrics"} | {"tasks": sorted(kept_results(job.kept_dir))}
    if previous is not None:
        kept.update(eval_seconds=round(previous["eval_seconds"] + eval_s, 1), date=previous["date"],
                    dates=sorted({previous["date"], *previous.get("dates", []), record["date"]}))
    temporary = job.kept_dir / "job.json.tmp"
    temporary.write_text(json.dumps(kept, indent=1) + "\n")
    temporary.replace(job.kept_dir / "job.json")
    # after job.json: a job killed in between is kept without a second line on its rerun
    append_result("quality", record, job.results_root)
    return record


def run_job_command(argv: list[str]) -> None:
    """``quality.py --run-job JOB [--pretrain-only] [key=value ...]``: one job in this process, as a
    submitit job runs it."""
    job = Job.from_json(argv[0])
    pretrain_only = "--pretrain-only" in argv[1:]
    run_job(job, [a for a in argv[1:] if a != "--pretrain-only"], pretrain_only)


LIVE_STATES = {"RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


class Submitter:
    """Starts jobs on one executor and hands back handles with ``done()`` and ``result()`` (a
    concurrent future or a submitit job)."""

    def __init__(self, executor: str, workers: int, folder: Path, timeout_min: int, slurm_partition: str | None = None, mem_gb: int = 8):
        self.executor, self.folder = executor, folder
        self.poll_s = 30.0 if executor == "slurm" else 1.0
        if executor == "pool":  # a fresh interpreter per job: no state shared with torch's threads
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
            return
        try:
            import submitit
        except ImportError:
            raise SystemExit(f"--executor {executor} needs submitit: pip install 'langmim[bench]'") from None
        try:
            self.submitit = submitit.AutoExecutor(folder=folder / "%j", cluster=executor)
        except RuntimeError as err:  # no srun on the PATH: not a SLURM cluster
            raise SystemExit(f"--executor {executor}: {err}") from None
        self.submitit.update_parameters(timeout_min=timeout_min, cpus_per_task=1, tasks_per_node=1, nodes=1, name="langmim-quality")
        if executor == "slurm":
            self.submitit.update_parameters(mem_gb=mem_gb, **({"slurm_partition": slurm_partition} if slurm_partition else {}))

    def submit(self, job: Job, extra: list[str], pretrain_only: bool):
        if self.executor == "pool":
            return self.pool.submit(run_job, job, extra, pretrain_only)
        from submitit.helpers import CommandFunction

        command = [sys.executable, str(Path(__file__).resolve()), "--run-job", job.to_json(), *(["--pretrain-only"] if pretrain_only else []), *extra]
        handle = self.submitit.submit(CommandFunction(command, verbose=False))
        append_result("submitted", {"job": job.key, "executor": self.executor, "id": handle.job_id, "date": date.today().isoformat()}, self.folder)
        return handle

    def close(self) -> None:
        if self.executor == "pool":
            self.pool.shutdown()


class Reattached:
    """A job an earlier driver submitted that is still queued or running: watched, not submitted again."""

    def __init__(self, job: Job, record: dict, folder: Path):
        self.job, self.record, self.folder = job, record, folder

    def done(self) -> bool:
        return submission_state(self.record, self.folder) not in LIVE_STATES

    def result(self) -> None:
        if not self.job.done:
            raise RuntimeError(f"submitted earlier as {self.record['executor']} job {self.record['id']}, it ended without keeping "
                               f"{','.join(self.job.missing_tasks())}; its log is in {self.folder / self.record['id']}")


def run_jobs(jobs: list[Job], extra: list[str], workers: int, pretrain_only: bool = False, executor: str = "pool",
             folder: Path = WORK_DIR / "submitit", timeout_min: int = 720, slurm_partition: str | None = None, mem_gb: int = 8) -> None:
    """Run the jobs not done yet, ``workers`` at a time on ``executor``, each after the job it needs;
    a job an earlier driver submitted that is still queued or running is waited for, not submitted again."""
    left = [job for job in jobs if not job.done and not (pretrain_only and job.method == FLOOR)]
    running: dict[object, Job] = {}
    failed: list[Job] = []
    submitted = submitted_jobs(folder)
    for job in list(left):
        record = submitted.get(job.key)
        if record is not None and submission_state(record, folder) in LIVE_STATES:
            running[Reattached(job, record, folder)] = job
            left.remove(job)
            print(f"still running: {job.key} as {record['executor']} job {record['id']}", flush=True)
    submitter = Submitter(executor, workers, folder, timeout_min, slurm_partition, mem_gb)
    try:
        while left or running:
            for job in list(left):
                if len(running) >= workers:
                    break
                if job.needs() is None or job.needs() not in (*left, *running.values()):
                    running[submitter.submit(job, extra, pretrain_only)] = job
                    left.remove(job)
                    print(f"started {job.key}", flush=True)
            while not any(handle.done() for handle in running):
                time.sleep(submitter.poll_s)
            for handle in [h for h in running if h.done()]:
                job = running.pop(handle)
                try:
                    handle.result()
                except Exception as err:  # the grid goes on; what needs this job is dropped with it
                    dropped = [j for j in left if j.needs() == job]
                    failed += [job, *dropped]
                    left = [j for j in left if j not in dropped]
                    print(f"FAILED {job.key}: {type(err).__name__}: {str(err)[-2000:]}"
                          f"{f' (dropped {len(dropped)} that need it)' if dropped else ''}", flush=True)
                    continue
                kept = json.loads((job.kept_dir / "job.json").read_text()) if job.kept and not pretrain_only else None
                print(f"done {job.key}" + ("" if kept is None else f": train {kept['train_seconds']} s, eval {kept['eval_seconds']} s"), flush=True)
    finally:
        submitter.close()
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed or were dropped: " + ", ".join(j.key for j in failed))


def submitted_jobs(folder: Path) -> dict[str, dict]:
    """{job key: its newest submission} from FOLDER/submitted.jsonl."""
    path = folder / "submitted.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return {record["job"]: record for record in map(json.loads, lines)}


def submission_state(record: dict, folder: Path) -> str:
    """What became of a submitted job: its scheduler's state (SLURM: PENDING, RUNNING, COMPLETED, ...),
    or whether its process lives (local: RUNNING or ENDED)."""
    if record["executor"] == "slurm":
        try:
            import submitit
        except ImportError:
            return "UNKNOWN (no submitit here)"
        return submitit.SlurmJob(folder / "%j", record["id"]).state
    try:
        os.kill(int(record["id"]), 0)
        return "RUNNING"
    except (OSError, ValueError):
        return "ENDED"


def print_plan(jobs: list[Job], executor: str, folder: Path) -> None:
    """Each job, done or left (with the tasks left and, where submitted, its last job id and state),
    the minutes it is expected to take from the kept jobs' measured seconds, and the CPU-hours left."""
    costs = {world: Costs.measured(jobs[0].results_root, world) for world in {j.world for j in jobs}}
    submitted = submitted_jobs(folder)
    seconds, unmeasured, done = 0.0, 0, 0
    for job in jobs:
        missing = job.missing_tasks()
        done += not missing
        notes = []
        if missing and job.kept:
            notes.append(f"tasks left: {','.join(missing)}")
        if missing and job.key in submitted:
            record = submitted[job.key]
            notes.append(f"submitted as {record['executor']} job {record['id']} ({submission_state(record, folder)})")
        estimate = costs[job.world].estimate(job, missing) if missing else 0.0
        if estimate is None:
            unmeasured += 1
        else:
            seconds += estimate
        expected = "" if not missing else "  ~? min" if estimate is None else f"  ~{estimate / 60:.0f} min"
        print(f"{'left' if missing else 'done'}  {job.world:<5} {job.point.name:<28} {job.method:<12} seed {job.seed}{expected}"
              + (f"  ({'; '.join(notes)})" if notes else ""))
    print(f"{done} of {len(jobs)} jobs done; left: {seconds / 3600:.1f} CPU-hours by the kept jobs' seconds"
          + (f", and {unmeasured} job(s) of a method or task never measured" if unmeasured else "") + f" (executor: {executor})")


def task_list(text: str, world: str) -> tuple[str, ...]:
    """Comma-separated task names; ``headline`` (the world's) and ``finetune`` stand for their groups.
    An unknown name is refused before any job starts."""
    from langmim.eval.registry import TASK_NAMES

    groups = {"headline": HEADLINE_TASKS[world], "finetune": FINETUNE_TASKS}
    tasks = [t for name in text.split(",") if name for t in groups.get(name, (name,))]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise SystemExit(f"--tasks: unknown task(s) {', '.join(unknown)}; choose from headline, finetune, {', '.join(TASK_NAMES)}")
    return tuple(dict.fromkeys(tasks))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"runs ({', '.join(RUNS)}) and key=value overrides")
    parser.add_argument("--seeds", type=int, default=3, help="pre-training seeds per method and point (default 3)")
    parser.add_argument("--steps", default="200,800,3200", help="the budget sweep, in steps of 128 images (unlimited scenes)")
    parser.add_argument("--num-scenes", default="2000,10000", help="the data-limited sweep: fixed scene sets ('' for none)")
    parser.add_argument("--data-steps", type=int, default=800, help="the budget of the data-limited sweep and the regimes (default 800)")
    parser.add_argument("--regimes", default="", help=f"web world only: caption regimes at --data-steps ({', '.join(REGIMES)})")
    parser.add_argument("--tasks", default="headline", help="evaluation tasks of every job; 'headline' (the world's) and 'finetune' "
                        "name groups (default headline)")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time, one torch thread each (default 2)")
    parser.add_argument("--world", choices=list(WORLDS), default="clean", help="the pre-training world (default clean)")
    parser.add_argument("--executor", choices=EXECUTORS, default="pool", help="a local process pool (default), or submitit's local or slurm executor")
    parser.add_argument("--slurm-partition", default=None, help="--executor slurm: the partition")
    parser.add_argument("--timeout-min", type=int, default=720, help="submitit executors: a job's time limit in minutes (default 720)")
    parser.add_argument("--mem-gb", type=int, default=8, help="--executor slurm: memory per job in GB (default 8)")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR, help=f"checkpoints and submitit logs (default {WORK_DIR})")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where jobs are kept (default benchmarks/results)")
    parser.add_argument("--pretrain-only", action="store_true", help="pre-train the jobs left and stop (evaluate later)")
    parser.add_argument("--plan", action="store_true", help="list the jobs, done and left, with the CPU-hours left, and stop")
    parser.add_argument("--summarize", action="store_true", help="only write the tables and figures, from every point the world has kept")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-job"]:
        return run_job_command(argv[1:])
    args = parse_args(argv)
    names = [a for a in args.names if "=" not in a] or list(RUNS)
    extra = [a for a in args.names if "=" in a]
    unknown = [n for n in names if n not in RUNS]
    regimes = [r for r in args.regimes.split(",") if r]
    if unknown:
        raise SystemExit(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if [r for r in regimes if r not in REGIMES] or (regimes and args.world != "web"):
        raise SystemExit(f"--regimes {args.regimes!r}: choose from {', '.join(REGIMES)}, with --world web")
    if args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
    if args.executor == "slurm" and not args.plan and args.work_dir.resolve().is_relative_to("/tmp"):
        raise SystemExit(f"--executor slurm: --work-dir {args.work_dir} is local to each node; give a folder every node shares")
    jobs = plan_jobs(names, args.seeds, [int(s) for s in args.steps.split(",") if s], [int(n) for n in args.num_scenes.split(",") if n],
                     args.data_steps, args.world, regimes, task_list(args.tasks, args.world), args.work_dir, args.results_dir)
    folder = args.work_dir / "submitit"
    if args.plan:
        return print_plan(jobs, args.executor, folder)
    if not args.summarize:
        run_jobs(jobs, extra, args.workers, args.pretrain_only, args.executor, folder, args.timeout_min, args.slurm_partition, args.mem_gb)
    if args.pretrain_only:
        return
    if args.results_dir != RESULTS_DIR:
        return print(f"kept under {args.results_dir}; the tables and figures are written for benchmarks/results only")
    from quality_tables import first_look, summarize

    written = summarize(kept_points(RESULTS_DIR, args.world), args.data_steps, args.world)
    print("written:", *written, *filter(None, [first_look()]), sep="\n  ")


if __name__ == "__main__":
    main()
