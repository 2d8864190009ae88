"""The quality protocol's grid: its points, runs and jobs, where each job's files go, what a kept
job holds, and how long a job left is expected to take (from the seconds of the jobs kept)."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from results_log import RESULTS_DIR

WORK_DIR = Path("/tmp/langmim_quality")
# the settings each world adds to every run, and the folder under RESULTS_DIR/quality its runs are kept in.
# The web world's encoder has 8 px patches (64 tokens), which read the 8x8 grid at a stride of 8 px that
# the demo's 16 px patches reach by refinement (eval.dense_refine=2) without it; its supervised ceiling
# learns the clean scenes' ground truth (the web world has no scene targets) with that encoder: every run
# of both worlds is evaluated on the same truthful evaluation scenes, as web-pretrained models are
# measured on curated benchmarks
WORLDS = {"clean": ((), "protocol"), "web": (("data.world=web", "model.arch=demo_p8", "eval.dense_refine=1"), "protocol-web")}
# the regime map's cells besides the web preset itself (docs/data.md has the preset's values and
# sources). The share of pairs whose caption shares no concept with the image is split between another
# scene's caption and boilerplate as the preset splits CC3M's 16.8% (70:30): YFCC15M's 36.5% is 25.6 +
# 10.9. "exhaustive" names every item with its colour, size and position, and no pair is mismatched:
# the clean world's captioning on the web world's scenes, language noise (synonyms, word order) kept.
REGIMES = {
    "mismatch-0": ("data.web.mismatch_share=0", "data.web.boilerplate_share=0"),
    "mismatch-36": ("data.web.mismatch_share=0.256", "data.web.boilerplate_share=0.109"),
    "exhaustive": ("data.web.extra_item_prob=1", "data.web.colour_drop=0", "data.web.size_drop=0", "data.web.position_drop=0",
                   "data.web.mismatch_share=0", "data.web.boilerplate_share=0"),
}
FLOOR, CEILING = "random-init", "supervised"
FIRST_SEED = 100  # clear of the evaluation scenes' seed (EVAL_SCENE_SEED = 1), whose train-split scenes the probes fit on
RUNS = {  # name: (preset, overrides); milan's teacher is added per point and seed
    "clip": ("demo", ("method=clip",)),
    "rils": ("demo", ("method=rils",)),
    "mae": ("mae_demo", ()),
    "milan": ("milan_demo", ()),
    "siglip": ("demo", ("method=siglip",)),  # the contrastive baselines take CLIP's optimiser
    "flip": ("demo", ("method=flip",)),
    "slip": ("demo", ("method=slip",)),
    CEILING: ("mae_demo", ("method=supervised",)),
    FLOOR: ("demo", ("method=rils",)),
}
DEFAULT_TASKS = ("zeroshot", "concepts", "retrieval", "knn", "linear", "fewshot", "presence", "cells", "binding", "counting",
                 "compositional", "detection", "segmentation", "shift")
# each world's headline tasks: the clean world's kept jobs predate `concepts` (their checkpoints were
# gone when it came), so asking it of them means pre-training all of them again
HEADLINE_TASKS = {"clean": tuple(t for t in DEFAULT_TASKS if t != "concepts"), "web": DEFAULT_TASKS}
FINETUNE_TASKS = ("finetune_lowshot", "finetune_segmentation", "finetune_detection")
TEXT_TASKS = ("zeroshot", "concepts", "retrieval", "compositional")  # the evaluation skips them for a model with no text tower
TEXTLESS_RUNS = ("mae", "milan", CEILING)  # runs whose model has no text tower
CAPTION_BLIND_RUNS = ("mae", CEILING, FLOOR)  # runs that never read a caption: a caption regime leaves them as they are


@dataclass(frozen=True)
class Point:
    """Where on the grid a run sits: its budget in steps, its fixed scene set (None: unlimited) and
    its caption regime (None: the world's preset; one of REGIMES otherwise)."""

    steps: int
    num_scenes: int | None = None
    regime: str | None = None

    @property
    def name(self) -> str:
        return f"steps-{self.steps}" + (f"-scenes-{self.num_scenes}" if self.num_scenes else "") + (f"-{self.regime}" if self.regime else "")

    def overrides(self) -> list[str]:
        return ([f"train.steps={self.steps}"] + ([f"data.num_scenes={self.num_scenes}"] if self.num_scenes else [])
                + list(REGIMES[self.regime] if self.regime else ()))

    @classmethod
    def from_name(cls, name: str) -> Point | None:
        """The point a kept folder is named after (``steps-800-scenes-2000-mismatch-36``); None for another folder."""
        parts = name.split("-")
        if len(parts) < 2 or parts[0] != "steps" or not parts[1].isdigit():
            return None
        scenes = int(parts[3]) if parts[2:4] and parts[2] == "scenes" and parts[3].isdigit() else None
        regime = "-".join(parts[4:] if scenes else parts[2:]) or None
        point = cls(int(parts[1]), scenes, regime)
        return point if point.name == name and (regime is None or regime in REGIMES) else None


def kept_points(results_root: Path, world: str) -> list[Point]:
    """The points one world has kept jobs at."""
    folders = sorted(kept_root(results_root, world).glob("steps-*")) if kept_root(results_root, world).is_dir() else []
    points = [Point.from_name(f.name) for f in folders if kept_seed_dirs(f, "*/seed-*")]
    return sorted((p for p in points if p is not None), key=lambda p: (p.regime or "", p.num_scenes or 0, p.steps))


def kept_root(results_root: Path, world: str) -> Path:
    """The folder one world's kept jobs live in."""
    return results_root / "quality" / WORLDS[world][1]


@dataclass(frozen=True)
class Job:
    """One (point, method, seed) of one world, evaluated on ``tasks``; checkpoints under ``work_root``,
    kept files under ``results_root``."""

    point: Point
    method: str
    seed: int
    world: str = "clean"
    tasks: tuple[str, ...] = DEFAULT_TASKS
    work_root: Path = field(default=WORK_DIR, compare=False)
    results_root: Path = field(default=RESULTS_DIR, compare=False)

    @property
    def key(self) -> str:
        return f"{self.world}/{self.point.name}/{self.method}/seed-{self.seed}"

    @property
    def work_dir(self) -> Path:
        world = self.work_root if self.world == "clean" else self.work_root / self.world
        return world / self.point.name / self.method / f"seed-{self.seed}"

    @property
    def kept_dir(self) -> Path:
        kept = kept_root(self.results_root, self.world)
        if self.method == FLOOR:  # one floor per seed: no pre-training, so no point
            return kept / FLOOR / f"seed-{self.seed}"
        return kept / self.point.name / self.method / f"seed-{self.seed}"

    @property
    def kept(self) -> bool:
        """Evaluated and kept, on some tasks at least."""
        return (self.kept_dir / "job.json").is_file()

    def missing_tasks(self) -> list[str]:
        """The tasks of this job without a kept result: all of them until the job is kept."""
        if not self.kept:
            return list(self.tasks)
        results = kept_results(self.kept_dir)
        has_text = any(r.get("has_text") for r in results.values())
        return [t for t in self.tasks if t not in results and (has_text or t not in TEXT_TASKS)]

    @property
    def done(self) -> bool:
        return not self.missing_tasks()

    def needs(self) -> Job | None:
        """The job whose checkpoint this one trains against (MILAN's teacher)."""
        if self.method != "milan":
            return None
        return Job(self.point, "clip", self.seed, self.world, self.tasks, self.work_root, self.results_root)

    def world_overrides(self) -> list[str]:
        overrides = list(WORLDS[self.world][0])
        return [o for o in overrides if not o.startswith("data.world=")] if self.method == CEILING else overrides

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> Job:
        fields = json.loads(text)
        return cls(Point(**fields.pop("point")), tasks=tuple(fields.pop("tasks")), work_root=Path(fields.pop("work_root")),
                   results_root=Path(fields.pop("results_root")), **fields)


def build_config(job: Job, extra: list[str]):
    """The job's merged config, and the preset it starts from."""
    from langmim.config import load_config

    preset, overrides = RUNS[job.method]
    if job.method == "milan":
        overrides = (f"milan.teacher.source=langmim:{job.needs().work_dir}",)
    return load_config(preset, [f"output_dir={job.work_dir}", f"train.seed={job.seed}", "train.ckpt_every=200",
                                "train.precision=auto", "train.report_to=[]", *job.point.overrides(), *job.world_overrides(),
                                *overrides, *extra]), preset


def plan_jobs(methods: list[str], seeds: int, budgets: list[int], num_scenes: list[int], data_steps: int, world: str = "clean",
              regimes: list[str] = (), tasks: tuple[str, ...] = HEADLINE_TASKS["clean"], work_root: Path = WORK_DIR,
              results_root: Path = RESULTS_DIR) -> list[Job]:
    """Every job of the grid, the shared point (``data_steps``, unlimited, the world's preset) first,
    then the data-limited points, the caption regimes (without the runs that read no caption), then
    the other budgets; within a point, seed by seed."""
    points = ([Point(data_steps)] + [Point(data_steps, n) for n in num_scenes] + [Point(data_steps, regime=r) for r in regimes]
              + [Point(s) for s in budgets if s != data_steps])
    seed_range = range(FIRST_SEED, FIRST_SEED + seeds)

    def job(point: Point, method: str, seed: int) -> Job:
        return Job(point, method, seed, world, tuple(tasks), work_root, results_root)

    jobs = [job(points[0], FLOOR, seed) for seed in seed_range] if FLOOR in methods else []
    for point in points:
        jobs += [job(point, m, seed) for seed in seed_range for m in methods
                 if m != FLOOR and not (point.regime and m in CAPTION_BLIND_RUNS)]
    return jobs


def kept_seed_dirs(folder: Path, pattern: str = "seed-*") -> list[Path]:
    """The seed folders of finished jobs (with job.json) under ``folder``."""
    return [d for d in sorted(folder.glob(pattern)) if (d / "job.json").is_file()]


def kept_results(seed_dir: Path) -> dict[str, dict]:
    """{task: result JSON} of one kept job."""
    found = {}
    for path in (seed_dir / "results").glob("*.json"):
        result = json.loads(path.read_text())
        if {"task", "metrics"} <= set(result):
            found[result["task"]] = result
    return found


def kept_metrics(method_dir: Path) -> dict[int, dict[str, dict]]:
    """{seed: {task: metrics}} of one method at one point (or of the floor), from its kept results."""
    return {int(d.name.split("-")[1]): {task: r["metrics"] for task, r in kept_results(d).items()} for d in kept_seed_dirs(method_dir)}


def seed_values(by_seed: dict[int, dict[str, dict]], task: str, key: str) -> list[float]:
    return [m[task][key] for _, m in sorted(by_seed.items()) if key in m.get(task, {})]


def trained_steps(work_dir: Path) -> int:
    """The step of a run's newest checkpoint (0 without one)."""
    steps = [int(p.stem.split("-")[1]) for p in work_dir.glob("checkpoint-*.pt") if p.stem.split("-")[1].isdigit()]
    return max(steps, default=0)


@dataclass
class Costs:
    """Measured seconds of the kept jobs of one world: pre-training per step of each method, and
    evaluation per task of each method, to estimate what a job left will take."""

    train_per_step: dict[str, list[float]] = field(default_factory=dict)
    task_seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @classmethod
    def measured(cls, results_root: Path, world: str) -> Costs:
        costs = cls()
        for seed_dir in kept_seed_dirs(kept_root(results_root, world), "**/seed-*"):
            job = json.loads((seed_dir / "job.json").read_text())
            if job["steps"] and job["train_seconds"]:
                costs.train_per_step.setdefault(job["run"], []).append(job["train_seconds"] / job["steps"])
            for task, result in kept_results(seed_dir).items():
                if "seconds" in result:
                    costs.task_seconds.setdefault((job["run"], task), []).append(result["seconds"])
        return costs

    def estimate(self, job: Job, tasks: list[str]) -> float | None:
        """Seconds to pre-train (where no checkpoint is left: a kept job whose checkpoints are gone
        trains again, MILAN its teacher too) and evaluate ``tasks``: the median of the kept jobs of
        the same method (a task's seconds of any method where this one has none); None when a part
        was never measured."""
        seconds = 0.0
        teacher = job.needs()  # trained by this job only where it is kept and its checkpoints are gone
        for run in (job, teacher if teacher is not None and teacher.kept else None):
            steps_left = 0 if run is None or run.method == FLOOR else run.point.steps - trained_steps(run.work_dir)
            if steps_left > 0:
                per_step = self.train_per_step.get(run.method)
                if not per_step:
                    return None
                seconds += statistics.median(per_step) * steps_left
        for task in tasks:
            if task in TEXT_TASKS and job.method in TEXTLESS_RUNS:
                continue
            measured = self.task_seconds.get((job.method, task)) or [s for (_, t), v in self.task_seconds.items() if t == task for s in v]
            if not measured:
                return None
            seconds += statistics.median(measured)
        return seconds
