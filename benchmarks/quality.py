"""The quality protocol: every method pre-trained with K seeds on fashion-scenes with the same
encoder and budget, beside a random-init floor and a supervised ceiling, over a budget sweep
(unlimited scenes) and a data-limited sweep (a fixed set of N scenes seen in epochs), then the
evaluation suite on each run; tables carry mean +- 95% interval over seeds and paired verdicts.

    python benchmarks/quality.py [METHOD ...] [--seeds 3] [--steps 200,800,3200]
        [--num-scenes 2000,10000] [--data-steps 800] [--tasks ...] [--workers 2] [key=value ...]
    python benchmarks/quality.py --plan        # the jobs, done and left, without running them
    python benchmarks/quality.py --summarize   # tables and figures from the kept results
    python benchmarks/quality.py --world web --steps 800 --num-scenes '' clip slip rils mae milan supervised random-init
                                               # the first look: the same protocol pre-trained on the web world

METHOD is any of clip, rils, mae, milan, siglip, flip, slip, supervised, random-init (default: all). A job is one
(point, method, seed): pre-train (resuming an interrupted run), then evaluate; jobs already kept
are skipped, so the protocol runs across sessions and machines in pieces. Seed K sets
``train.seed=K`` (K from 100 on: the evaluation draws its scenes of train-split items with seed 1,
which a pre-training seed must not repeat): the scenes drawn (and the fixed set of a data-limited
point), their order, the initialisation and the masks; the random-init floor of seed K is that
seed's initialisation.
MILAN distils the CLIP run of its own point and seed. ``--world web`` pre-trains on the web world
(``data.world=web``) with its encoder (``model.arch=demo_p8``) and keeps its runs apart
(benchmarks/results/quality/protocol-web/); every run of either world is evaluated on the same
data. The first-look block of benchmarks/README.md sets the two worlds side by side at 800 steps.
``--pretrain-only`` pre-trains the jobs left and stops. ``--workers`` processes run at a time, each
on one torch thread.

Checkpoints go to /tmp/langmim_quality/POINT/METHOD/seed-K; kept in the repository are each run's
training log, merged config and result JSONs (benchmarks/results/quality/protocol/POINT/METHOD/seed-K/),
one line per job in benchmarks/results/quality.jsonl, and the summary tables and figures.

Optimiser settings follow each family's preset: CLIP and RILS use the demo's (lr 5e-4, betas
0.9/0.98, open_clip's), MAE, MILAN and the supervised ceiling the mae_demo and milan_demo presets'
(lr 1e-3, betas 0.9/0.95). Precision is the presets' ``auto``: bf16 autocast where the CPU has native bf16.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from results_log import RESULTS_DIR, append_result

WORK_DIR = Path("/tmp/langmim_quality")
KEPT_DIR = RESULTS_DIR / "quality" / "protocol"
# the settings each world adds to every run, and where its runs are kept. The web world's encoder has
# 8 px patches (64 tokens), which read the 8x8 grid at a stride of 8 px that the demo's 16 px
# patches reach by refinement (eval.dense_refine=2) without it; its supervised ceiling learns the clean scenes' ground truth (the web
# world has no scene targets) with that encoder: every run of both worlds is evaluated on the same
# truthful evaluation scenes, as web-pretrained models are measured on curated benchmarks
WORLDS = {"clean": ([], KEPT_DIR), "web": (["data.world=web", "model.arch=demo_p8", "eval.dense_refine=1"], RESULTS_DIR / "quality" / "protocol-web")}
FLOOR, CEILING = "random-init", "supervised"
FIRST_SEED = 100  # clear of the evaluation scenes' seed (EVAL_SCENE_SEED = 1), whose train-split scenes the probes fit on
RUNS = {  # name: (preset, overrides); milan's teacher is added per point and seed
    "clip": ("demo", ["method=clip"]),
    "rils": ("demo", ["method=rils"]),
    "mae": ("mae_demo", []),
    "milan": ("milan_demo", []),
    "siglip": ("demo", ["method=siglip"]),  # the contrastive baselines take CLIP's optimiser
    "flip": ("demo", ["method=flip"]),
    "slip": ("demo", ["method=slip"]),
    CEILING: ("mae_demo", ["method=supervised"]),
    FLOOR: ("demo", ["method=rils"]),
}
DEFAULT_TASKS = ("zeroshot", "concepts", "retrieval", "knn", "linear", "fewshot", "presence", "cells", "binding", "counting",
                 "compositional", "detection", "segmentation", "shift")


@dataclass(frozen=True)
class Point:
    """Where on the sweeps a run sits: its budget in steps, and its fixed scene set (None: unlimited)."""

    steps: int
    num_scenes: int | None = None

    @property
    def name(self) -> str:
        return f"steps-{self.steps}" + (f"-scenes-{self.num_scenes}" if self.num_scenes else "")

    def overrides(self) -> list[str]:
        return [f"train.steps={self.steps}"] + ([f"data.num_scenes={self.num_scenes}"] if self.num_scenes else [])


@dataclass(frozen=True)
class Job:
    point: Point
    method: str
    seed: int
    world: str = "clean"

    @property
    def work_dir(self) -> Path:
        world = WORK_DIR if self.world == "clean" else WORK_DIR / self.world
        return world / self.point.name / self.method / f"seed-{self.seed}"

    @property
    def kept_dir(self) -> Path:
        kept = WORLDS[self.world][1]
        if self.method == FLOOR:  # one floor per seed: no pre-training, so no point
            return kept / FLOOR / f"seed-{self.seed}"
        return kept / self.point.name / self.method / f"seed-{self.seed}"

    @property
    def done(self) -> bool:
        return (self.kept_dir / "job.json").is_file()

    def needs(self) -> Job | None:
        """The job whose checkpoint this one trains against (MILAN's teacher)."""
        return Job(self.point, "clip", self.seed, self.world) if self.method == "milan" else None

    def world_overrides(self) -> list[str]:
        overrides = WORLDS[self.world][0]
        return [o for o in overrides if not o.startswith("data.world=")] if self.method == CEILING else overrides


def build_config(job: Job, extra: list[str]):
    from langmim.config import load_config

    preset, overrides = RUNS[job.method]
    if job.method == "milan":
        overrides = [f"milan.teacher.source=langmim:{job.needs().work_dir}"]
    return load_config(preset, [f"output_dir={job.work_dir}", f"train.seed={job.seed}", "train.ckpt_every=200",
                                "train.precision=auto", "train.report_to=[]", *job.point.overrides(), *job.world_overrides(),
                                *overrides, *extra]), preset


def add_train_seconds(work_dir: Path, seconds: float) -> float:
    """The run's training seconds over all its invocations (an interrupted run resumes in another)."""
    path = work_dir / "train_seconds.txt"
    total = (float(path.read_text()) if path.is_file() else 0.0) + seconds
    path.write_text(f"{total:.1f}\n")
    return total


def run_job(job: Job, extra: list[str], tasks: list[str], pretrain_only: bool = False) -> dict | None:
    """Pre-train (resuming) and evaluate one job in this process on one torch thread; keep its files.
    With ``pretrain_only``, stop after pre-training (the evaluation comes with a later invocation)."""
    import torch

    from langmim import __version__
    from langmim.api import load
    from langmim.demo import random_init_model
    from langmim.engine.loop import pretrain
    from langmim.eval.suite import evaluate

    torch.set_num_threads(1)
    cfg, preset = build_config(job, extra)
    train_s = 0.0
    need = job.needs()
    if need is not None:  # its checkpoint may be gone with /tmp: training it again gives the same weights
        pretrain(build_config(need, extra)[0], resume="latest", log_tensorboard=False)
    if job.method != FLOOR:
        start = time.perf_counter()
        pretrain(cfg, resume="latest", log_tensorboard=False)
        train_s = add_train_seconds(job.work_dir, time.perf_counter() - start)
    if pretrain_only:
        return None
    model = random_init_model(cfg) if job.method == FLOOR else load(job.work_dir)
    results_dir = job.work_dir / "results"
    shutil.rmtree(results_dir, ignore_errors=True)
    start = time.perf_counter()
    results = evaluate(model, tasks, cfg.eval, results_dir, job.method, cfg.data.root, log=lambda _: None)
    eval_s = time.perf_counter() - start
    shutil.rmtree(job.kept_dir, ignore_errors=True)
    (job.kept_dir / "results").mkdir(parents=True)
    for result in results_dir.glob("*.json"):
        shutil.copy(result, job.kept_dir / "results" / result.name)
    if job.method != FLOOR:
        for log in ("metrics.jsonl", "config.yaml"):
            shutil.copy(job.work_dir / log, job.kept_dir / log)
    record = {
        "date": date.today().isoformat(), "world": job.world, "point": job.point.name, "run": job.method, "seed": job.seed,
        "preset": preset, "overrides": [*job.point.overrides(), *job.world_overrides(), *extra], "steps": 0 if job.method == FLOOR else job.point.steps,
        "num_scenes": job.point.num_scenes, "batch_size": cfg.train.batch_size,
        "images_seen": 0 if job.method == FLOOR else job.point.steps * cfg.train.batch_size, "precision": cfg.train.precision,
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "langmim": __version__, "machine": platform.machine(), "cpu": cpu_name(),
        "metrics": {task: {k: round(v, 2) for k, v in r["metrics"].items() if isinstance(v, (int, float))} for task, r in results.items()},
    }
    (job.kept_dir / "job.json").write_text(json.dumps({k: v for k, v in record.items() if k != "metrics"}, indent=1) + "\n")
    append_result("quality", record)  # after job.json: a job killed in between is kept without a second line on its rerun
    return record


# (title, task, metric key) of the headline metrics: the sweep figures draw one panel each
HEADLINE = (
    ("zero-shot top-1 (%)", "zeroshot", "top1"),
    ("concept zero-shot, head concepts (%)", "concepts", "head_top1"),
    ("concept zero-shot, tail concepts (%)", "concepts", "tail_top1"),
    ("linear probe top-1, patch mean (%)", "linear", "mean_top1"),
    ("few-shot 16-shot, logistic (%)", "fewshot", "mean_logistic_16shot"),
    ("scene presence mAP (%)", "presence", "mean_map"),
    ("garment per occupied cell (%)", "cells", "occupied_accuracy"),
    ("colour of a named garment (%)", "binding", "mean_top1"),
    ("compositional zero-shot (%)", "compositional", "mean_acc"),
    ("detection AP50 (%)", "detection", "ap50"),
    ("segmentation mIoU (%)", "segmentation", "miou"),
    ("shifted renders, linear probe (%)", "shift", "linear_shifted_mean"),
)


def kept_seed_dirs(folder: Path, pattern: str = "seed-*") -> list[Path]:
    """The seed folders of finished jobs (with job.json) under ``folder``."""
    return [d for d in sorted(folder.glob(pattern)) if (d / "job.json").is_file()]


def kept_metrics(method_dir: Path) -> dict[int, dict[str, dict]]:
    """{seed: {task: metrics}} of one method at one point (or of the floor), from its kept results."""
    found = {}
    for seed_dir in kept_seed_dirs(method_dir):
        results = {}
        for path in (seed_dir / "results").glob("*.json"):
            result = json.loads(path.read_text())
            if {"task", "metrics"} <= set(result):
                results[result["task"]] = result["metrics"]
        found[int(seed_dir.name.split("-")[1])] = results
    return found


def seed_values(by_seed: dict[int, dict[str, dict]], task: str, key: str) -> list[float]:
    return [m[task][key] for _, m in sorted(by_seed.items()) if key in m.get(task, {})]


def plot_sweep(points: list[Point], x_of: Callable[[Point], int], x_label: str, figure_title: str, png: Path) -> Path | None:
    """One panel per headline metric against ``x_of(point)`` (axis ``x_label``, figure ``figure_title``):
    a line per method with its 95% interval band over seeds, the random-init floor as a grey band."""
    from langmim.report import pyplot
    from langmim.stats import mean_interval

    points = [p for p in points if (KEPT_DIR / p.name).is_dir()]
    if len(points) < 2:
        return None
    plt = pyplot()
    floor = kept_metrics(KEPT_DIR / FLOOR)
    columns = (len(HEADLINE) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(4 * columns, 7), squeeze=False)
    xs = [x_of(p) for p in points]
    for ax, (title, task, key) in zip(axes.flat, HEADLINE):
        for method in (m for m in RUNS if m != FLOOR):
            line = []
            for point, x in zip(points, xs):
                values = seed_values(kept_metrics(KEPT_DIR / point.name / method), task, key)
                if values:
                    interval = mean_interval(values)
                    line.append((x, interval.mean, interval.half_width if interval.n > 1 else 0.0))
            if line:
                x, mean, half = map(list, zip(*line))
                style = "--" if method == CEILING else "-"
                drawn = ax.plot(x, mean, style, marker="o", label=method)[0]
                ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], color=drawn.get_color(), alpha=0.2)
        values = seed_values(floor, task, key)
        if values:
            interval = mean_interval(values)
            ax.axhline(interval.mean, color="grey", linestyle=":", label=FLOOR)
            if interval.n > 1:
                ax.axhspan(interval.low, interval.high, color="grey", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs], fontsize=7)
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(HEADLINE):]:
        ax.axis("off")
    handles = {label: line for ax in axes.flat for line, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(figure_title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


COMPARE = (("rils", "clip"), ("milan", "mae"), ("slip", "clip"), ("siglip", "clip"), ("flip", "clip"), ("mae", FLOOR),
           ("milan", FLOOR), ("clip", FLOOR), ("rils", FLOOR))
CLAIMS = (("rils", "clip"), ("milan", "mae"), ("slip", "clip"), ("mae", FLOOR), ("milan", FLOOR))  # the pairs the headline table tests
HEADLINE_GAP = 25.0  # points the ceiling must clear the floor by for a task to headline
TEXT_TASKS = ("zeroshot", "concepts", "compositional")  # the ceiling has no text tower: these tasks have no ceiling


def interval_text(values: list[float], signed: bool = False) -> str:
    """"mean ± 95% half-width" over seeds, one decimal; a single seed reads "mean (n=1)"."""
    from langmim.stats import mean_interval

    interval = mean_interval(values)
    mean = f"{interval.mean:+.1f}" if signed else f"{interval.mean:.1f}"
    return f"{mean} (n=1)" if interval.n == 1 else f"{mean} ± {interval.half_width:.1f}"


def claim_text(a: dict[int, dict], b: dict[int, dict], task: str, key: str) -> str:
    """A - B over the seeds both have, "mean ± half-width, verdict" (paired t-test at 95%)."""
    from langmim.stats import paired_verdict

    seeds = [s for s in sorted(a.keys() & b.keys()) if key in a[s].get(task, {}) and key in b[s].get(task, {})]
    if not seeds:
        return "–"
    verdict = paired_verdict([a[s][task][key] for s in seeds], [b[s][task][key] for s in seeds])
    return f"{interval_text([a[s][task][key] - b[s][task][key] for s in seeds], signed=True)} {verdict.verdict}"


def known_room(runs: dict[str, dict[int, dict]], task: str, key: str) -> tuple[str, float | None]:
    """How far above the floor a task is known to reach, in points: the ceiling's paired gap; for
    the text tasks, which the ceiling (no text tower) cannot take, the best method's gap instead."""
    if task not in TEXT_TASKS:
        gap = claim_text(runs[CEILING], runs[FLOOR], task, key)
        return gap, None if gap == "–" else float(gap.split()[0])
    best = max((m for m in runs if m not in (FLOOR, CEILING) and seed_values(runs[m], task, key)),
               key=lambda m: statistics.mean(seed_values(runs[m], task, key)), default=None)
    gap = "–" if best is None else claim_text(runs[best], runs[FLOOR], task, key)
    if gap == "–":
        return gap, None
    return f"{gap} ({best}; no ceiling: it has no text tower)", float(gap.split()[0])


def headline_table(point: Point, kept: Path = KEPT_DIR, claims: tuple[tuple[str, str], ...] = CLAIMS,
                   methods: tuple[str, ...] = tuple(RUNS)) -> str:
    """Markdown: a row per headline metric at ``point`` (of the runs kept under ``kept``), each run's
    mean ± 95% interval over seeds, the known room above the floor (``known_room``) and the paired
    ``claims`` with their verdicts. A task headlines only where that room is at least HEADLINE_GAP
    points; the others follow in a second table with their measured room."""
    runs = {m: kept_metrics(kept / point.name / m) if m in methods else {} for m in RUNS if m != FLOOR}
    runs[FLOOR] = kept_metrics(kept / FLOOR)
    columns = [FLOOR, CEILING, *(m for m in RUNS if m not in (FLOOR, CEILING) and runs[m])]  # methods run at this point
    claims = [(a, b) for a, b in claims if runs[a] and runs[b]]
    header = ["metric", *columns, "room above the floor", *(f"{a} − {b}" for a, b in claims)]
    rows: dict[bool, list[str]] = {True: [], False: []}
    for title, task, key in HEADLINE:
        cells = [interval_text(values) if (values := seed_values(runs[m], task, key)) else "–" for m in columns]
        if all(cell == "–" for cell in cells):  # a task this point's runs were not evaluated on
            continue
        room, points = known_room(runs, task, key)
        cells += [room, *(claim_text(runs[a], runs[b], task, key) for a, b in claims)]
        rows[points is not None and points >= HEADLINE_GAP].append(f"| {title} | " + " | ".join(cells) + " |")
    table = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    out = [f"Headline tasks (room above the floor of at least {HEADLINE_GAP:.0f} points):", "", *table, *rows[True]]
    if rows[False]:
        out += ["", f"Out of the headline (room under {HEADLINE_GAP:.0f} points: the task cannot show what an encoder "
                "knows at this point):", "", *table, *rows[False]]
    return "\n".join(out)


BENCHMARKS_README = Path(__file__).with_name("README.md")


def point_title(point: Point, batch_size: int) -> str:
    seen = f"{point.steps:,} steps of {batch_size} ({point.steps * batch_size:,} images seen)"
    return f"{seen}, " + (f"a fixed set of {point.num_scenes:,} scenes" if point.num_scenes else "a fresh scene per sample")


def replace_block(path: Path, name: str, text: str) -> Path:
    """Put ``text`` between the ``<!-- name -->`` and ``<!-- /name -->`` lines of ``path``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    before, found, rest = path.read_text().partition(start)
    if not found or end not in rest:
        raise SystemExit(f"{path}: no {start} ... {end} block to write the tables into")
    path.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
    return path


def summarize(points: list[Point], data_steps: int, batch_size: int = 128) -> list[Path]:
    """Per point, report.md (mean +- 95% interval over seeds, margins over the floor, shares of the
    floor-to-ceiling gap, paired verdicts); the two sweep figures."""
    from langmim.report import write_report

    written = []
    floor_dirs = kept_seed_dirs(KEPT_DIR / FLOOR)
    for point in points:
        run_dirs = kept_seed_dirs(KEPT_DIR / point.name, "*/seed-*")
        if not run_dirs:
            continue
        present = {d.parent.name for d in run_dirs} | ({FLOOR} if floor_dirs else set())
        compare = [(a, b) for a, b in COMPARE if {a, b} <= present]
        written.append(write_report(run_dirs + floor_dirs, KEPT_DIR / point.name, floor=FLOOR if floor_dirs else None,
                                    ceiling=CEILING if CEILING in present and floor_dirs else None, compare=compare, seeds=True))
    tables = [f"#### {point_title(p, batch_size)}\n\n{headline_table(p)}\n" for p in points if (KEPT_DIR / p.name).is_dir()]
    if tables:
        (KEPT_DIR / "headline.md").write_text("# Headline metrics per point: mean ± 95% interval over seeds; "
                                              "differences paired by seed with their verdicts\n\n" + "\n".join(tables))
        written += [KEPT_DIR / "headline.md", replace_block(BENCHMARKS_README, "quality-headline", "\n".join(tables))]
    budget = sorted({p for p in points if p.num_scenes is None}, key=lambda p: p.steps)
    data = sorted({p for p in points if p.steps == data_steps}, key=lambda p: p.num_scenes or p.steps * batch_size)
    written += [png for png in (
        plot_sweep(budget, lambda p: p.steps * batch_size, "images seen", "The budget sweep: a fresh scene per sample; "
                   "mean and 95% interval over seeds", KEPT_DIR / "sweep_budget.png"),
        plot_sweep(data, lambda p: p.num_scenes or p.steps * batch_size, "distinct scenes",
                   f"The data-limited sweep: {data_steps * batch_size:,} images seen; rightmost, a fresh scene per sample; "
                   "mean and 95% interval over seeds", KEPT_DIR / "sweep_data.png"),
    ) if png is not None]
    return written


FIRST_LOOK = Point(800)  # the one budget both worlds are compared at
FIRST_LOOK_METHODS = ("clip", "slip", "rils", "mae", "milan", CEILING)
FIRST_LOOK_CLAIMS = (("slip", "clip"), ("rils", "clip"), ("milan", "clip"), ("mae", "clip"), ("milan", "mae"), ("rils", "mae"))


def cost_text(kept: Path, point: Point) -> str:
    """When, where and at what CPU cost the kept jobs of one world at ``point`` ran."""
    jobs = [json.loads((d / "job.json").read_text()) for d in
            [*kept_seed_dirs(kept / point.name, "*/seed-*"), *kept_seed_dirs(kept / FLOOR)]]
    jobs = [j for j in jobs if j["run"] in (*FIRST_LOOK_METHODS, FLOOR)]
    if not jobs:
        return "no jobs kept yet"
    hours = {k: sum(j[k] for j in jobs) / 3600 for k in ("train_seconds", "eval_seconds")}
    cpus = sorted({f"{j['cpu']} ({j['machine']})" for j in jobs})
    dates = sorted({j["date"] for j in jobs})
    return (f"{len(jobs)} jobs run {' to '.join(dict.fromkeys((dates[0], dates[-1])))} on {'; '.join(cpus)}, one torch thread "
            f"each: {hours['train_seconds']:.1f} hours of pre-training and {hours['eval_seconds']:.1f} of evaluation (wall-clock)")


def text_only_text(kept: Path, point: Point) -> str:
    """The compositional task's text-only control as one run of this world measured it (it reads
    the captions alone, so every run measures the same)."""
    for path in sorted((kept / point.name).glob("*/seed-*/results/*_compositional_*.json")):
        metrics = json.loads(path.read_text())["metrics"]
        if "text_only_mean_acc" in metrics:
            kinds = ", ".join(f"{k[len('text_only_'):-len('_acc')]} {v:.1f}" for k, v in metrics.items()
                              if k.startswith("text_only_") and k != "text_only_mean_acc")
            return f"{metrics['text_only_mean_acc']:.1f}% (per kind of negative: {kinds})"
    return "not in these runs' results (it reads the captions alone, the same for every run of both worlds)"


def first_look() -> Path | None:
    """The first-look block of benchmarks/README.md: the headline table of both worlds at
    FIRST_LOOK, verdicts against CLIP and MAE, and each world's cost."""
    worlds = [(name, kept) for name, (_, kept) in WORLDS.items() if (kept / FIRST_LOOK.name).is_dir()]
    if not worlds:
        return None
    blocks = []
    for name, kept in worlds:
        blocks.append(f"#### The {name} world: {point_title(FIRST_LOOK, 128)}\n\n"
                      f"{headline_table(FIRST_LOOK, kept, FIRST_LOOK_CLAIMS, FIRST_LOOK_METHODS)}\n\n"
                      f"Text-only control of the compositional task (no image seen): {text_only_text(kept, FIRST_LOOK)}. "
                      f"Cost: {cost_text(kept, FIRST_LOOK)}.\n")
    return replace_block(BENCHMARKS_README, "first-look", "\n".join(blocks))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def plan_jobs(methods: list[str], seeds: int, budgets: list[int], num_scenes: list[int], data_steps: int,
              world: str = "clean") -> list[Job]:
    """Every job of the grid, the shared point (``data_steps``, unlimited) first, then the
    data-limited points, then the other budgets; within a point, seed by seed."""
    points = [Point(data_steps)] + [Point(data_steps, n) for n in num_scenes] + [Point(s) for s in budgets if s != data_steps]
    seed_range = range(FIRST_SEED, FIRST_SEED + seeds)
    jobs = [Job(points[0], FLOOR, seed, world) for seed in seed_range] if FLOOR in methods else []
    for point in points:
        jobs += [Job(point, m, seed, world) for seed in seed_range for m in methods if m != FLOOR]
    return jobs


def run_jobs(jobs: list[Job], extra: list[str], tasks: list[str], workers: int, pretrain_only: bool = False) -> None:
    """Run the jobs not done yet, ``workers`` at a time, each after the job it needs."""
    left = [job for job in jobs if not job.done]
    running: dict[Future, Job] = {}
    failed: list[Job] = []
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no state shared with torch's threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        while left or running:
            for job in list(left):
                if len(running) == workers:
                    break
                if job.needs() is None or job.needs() not in (*left, *running.values()):
                    running[pool.submit(run_job, job, extra, tasks, pretrain_only)] = job
                    left.remove(job)
                    print(f"started {job.point.name} {job.method} seed {job.seed}", flush=True)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    record = future.result()
                except Exception as err:  # the grid goes on; what needs this job is dropped with it
                    dropped = [j for j in left if j.needs() == job]
                    failed += [job, *dropped]
                    left = [j for j in left if j not in dropped]
                    print(f"FAILED {job.point.name} {job.method} seed {job.seed}: {type(err).__name__}: {err}"
                          f"{f' (dropped {len(dropped)} that need it)' if dropped else ''}", flush=True)
                    continue
                print(f"done {job.point.name} {job.method} seed {job.seed}" + ("" if record is None else
                      f": train {record['train_seconds']} s, eval {record['eval_seconds']} s"), flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed or were dropped: "
                         + ", ".join(f"{j.point.name}/{j.method}/seed-{j.seed}" for j in failed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"runs ({', '.join(RUNS)}) and key=value overrides")
    parser.add_argument("--seeds", type=int, default=3, help="pre-training seeds per method and point (default 3)")
    parser.add_argument("--steps", default="200,800,3200", help="the budget sweep, in steps of 128 images (unlimited scenes)")
    parser.add_argument("--num-scenes", default="2000,10000", help="the data-limited sweep: fixed scene sets ('' for none)")
    parser.add_argument("--data-steps", type=int, default=800, help="the budget of the data-limited sweep (default 800)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="evaluation tasks of every job")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time, one torch thread each (default 2)")
    parser.add_argument("--world", choices=list(WORLDS), default="clean", help="the pre-training world (default clean)")
    parser.add_argument("--pretrain-only", action="store_true", help="pre-train the jobs left and stop (evaluate later)")
    parser.add_argument("--plan", action="store_true", help="list the jobs, done and left, and stop")
    parser.add_argument("--summarize", action="store_true", help="only write the tables and figures from the kept results")
    args = parser.parse_args()
    names = [a for a in args.names if "=" not in a] or list(RUNS)
    extra = [a for a in args.names if "=" in a]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    jobs = plan_jobs(names, args.seeds, [int(s) for s in args.steps.split(",") if s],
                     [int(n) for n in args.num_scenes.split(",") if n], args.data_steps, args.world)
    if args.plan:
        for job in jobs:
            print(f"{'done' if job.done else 'left'}  {job.point.name:<24} {job.method:<12} seed {job.seed}")
        print(f"{sum(j.done for j in jobs)} of {len(jobs)} jobs done")
        return
    if not args.summarize:
        run_jobs(jobs, extra, args.tasks.split(","), args.workers, args.pretrain_only)
    if args.pretrain_only:
        return
    points = list(dict.fromkeys(job.point for job in jobs))
    written = summarize(points, args.data_steps) if args.world == "clean" else []
    print("written:", *written, *filter(None, [first_look()]), sep="\n  ")


if __name__ == "__main__":
    main()
