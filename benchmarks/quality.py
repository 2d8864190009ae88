"""Equal-budget quality comparison and budget sweep: MAE, CLIP, RILS and MILAN (teacher: the CLIP run
of the same budget) on fashion-scenes with the same encoder, data and number of steps, then the
whole evaluation suite on each and on a randomly initialised encoder (the floor).

    python benchmarks/quality.py [METHOD ...] [--steps 200,800,3200] [--phase train|eval|all] [key=value ...]
    python benchmarks/quality.py --plot        # the budget-sweep figures from the kept results

METHOD is any of clip, rils, mae, milan, random-init (default: all, in that order; milan needs the
clip run of its budget). ``--phase train`` only pre-trains (resuming an interrupted run), ``eval``
only evaluates finished runs, so the slow part can run in the background while the suite
changes. Checkpoints go to /tmp/langmim_quality/steps-N/METHOD; what is kept in the repository is
small: each run's training log (metrics.jsonl), its merged config and the result JSON of every
task (benchmarks/results/quality/steps-N/METHOD/), one summary line per run in
benchmarks/results/quality.jsonl, per budget a report.md with the comparison table, and the
sweep figures (benchmarks/results/quality/sweep_*.png).

Optimiser settings follow each family's preset: CLIP and RILS use the demo's (lr 5e-4, betas
0.9/0.98, open_clip's), MAE and MILAN the milan_demo preset's (lr 1e-3, betas 0.9/0.95, MAE's).
Precision is the presets' ``auto``: bf16 autocast where the CPU has native bf16, fp32 elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from datetime import date
from pathlib import Path

import torch

from langmim import __version__
from langmim.api import load
from langmim.config import load_config
from langmim.demo import random_init_model
from langmim.engine.loop import pretrain
from langmim.eval.suite import TASKS, evaluate
from langmim.report import read_results, write_report
from results_log import RESULTS_DIR, append_result

WORK_DIR = Path("/tmp/langmim_quality")
KEPT_DIR = RESULTS_DIR / "quality"
METHODS = ("clip", "rils", "mae", "milan")
RUNS = {  # name: (preset, overrides); milan's teacher is added per budget
    "clip": ("demo", ["method=clip"]),
    "rils": ("demo", ["method=rils"]),
    "mae": ("milan_demo", ["method=mae"]),
    "milan": ("milan_demo", []),
    "random-init": ("demo", ["method=rils"]),
}
# (figure title, task, metric key) of the sweep figures: the headline of every task family
SWEEP_METRICS = (
    ("zero-shot top-1 (%)", "zeroshot", "top1"),
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


def run_config(name: str, steps: int, extra: list[str]):
    preset, overrides = RUNS[name]
    if name == "milan":
        overrides = [f"teacher.source=langmim:{WORK_DIR / f'steps-{steps}' / 'clip'}"]
    out = WORK_DIR / f"steps-{steps}" / name
    cfg = load_config(preset, [f"output_dir={out}", f"train.steps={steps}", "train.ckpt_every=200", "train.precision=auto", *overrides, *extra])
    return cfg, preset, overrides, out


def train_one(name: str, steps: int, extra: list[str]) -> None:
    if name == "random-init":
        return
    cfg, *_, out = run_config(name, steps, extra)
    start = time.perf_counter()
    pretrain(cfg, resume="latest", log_tensorboard=False)
    (out / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")


def eval_one(name: str, steps: int, extra: list[str]) -> dict:
    cfg, preset, overrides, out = run_config(name, steps, extra)
    kept = KEPT_DIR / f"steps-{steps}" / name
    shutil.rmtree(kept, ignore_errors=True)
    (kept / "results").mkdir(parents=True)
    if name == "random-init":
        model, train_s = random_init_model(cfg), 0.0
    else:
        for log in ("metrics.jsonl", "config.yaml"):
            shutil.copy(out / log, kept / log)
        model = load(out)
        if model.step != steps:
            raise SystemExit(f"{out} stopped at step {model.step} of {steps}: run --phase train first")
        timing = out / "train_seconds.txt"
        train_s = float(timing.read_text()) if timing.is_file() else float("nan")
    results_dir = out / "results"
    shutil.rmtree(results_dir, ignore_errors=True)
    start = time.perf_counter()
    results = evaluate(model, list(TASKS), cfg.eval, results_dir, name, cfg.data.root)
    eval_s = time.perf_counter() - start
    for result in results_dir.glob("*.json"):
        shutil.copy(result, kept / "results" / result.name)
    record = {
        "date": date.today().isoformat(), "run": name, "preset": preset, "overrides": overrides + extra,
        "steps": 0 if name == "random-init" else steps, "batch_size": cfg.train.batch_size,
        "images_seen": 0 if name == "random-init" else steps * cfg.train.batch_size,
        "precision": cfg.train.precision, "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "langmim": __version__,
        "machine": platform.machine(), "cpu": cpu_name(),
        "metrics": {task: {k: round(v, 2) for k, v in r["metrics"].items() if isinstance(v, (int, float))}
                    for task, r in results.items()},
    }
    append_result("quality", record)
    print(json.dumps({k: v for k, v in record.items() if k != "metrics"}), flush=True)
    return record


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def plot_sweep(out_dir: Path = KEPT_DIR) -> list[Path]:
    """One figure per headline metric against images seen, a line per method, random init as the
    floor; from the kept results of every budget."""
    import matplotlib.pyplot as plt

    budgets = sorted(int(p.name.split("-")[1]) for p in out_dir.glob("steps-*") if p.is_dir())
    series: dict[str, dict[int, dict]] = {}
    floor: dict = {}
    for steps in budgets:
        for method in (*METHODS, "random-init"):
            results = out_dir / f"steps-{steps}" / method / "results"
            if results.is_dir():
                found = read_results(results).get(method, {})
                if method == "random-init":
                    floor = floor or found
                else:
                    series.setdefault(method, {})[steps] = found
    batch = 128
    fig, axes = plt.subplots(2, (len(SWEEP_METRICS) + 1) // 2, figsize=(4 * ((len(SWEEP_METRICS) + 1) // 2), 7), squeeze=False)
    for ax, (title, task, key) in zip(axes.flat, SWEEP_METRICS):
        for method, by_steps in series.items():
            points = [(s * batch, r[task]["metrics"][key]) for s, r in sorted(by_steps.items()) if key in r.get(task, {}).get("metrics", {})]
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        if key in floor.get(task, {}).get("metrics", {}):
            ax.axhline(floor[task]["metrics"][key], color="grey", linestyle="--", label="random init")
        ax.set_xscale("log")
        ax.set_xticks([s * batch for s in budgets], [f"{s * batch:,}" for s in budgets], fontsize=7)
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("images seen")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(SWEEP_METRICS):]:
        ax.axis("off")
    handles = {label: line for ax in axes.flat for line, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    png = out_dir / "sweep.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [png]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"runs ({', '.join(RUNS)}) and key=value overrides")
    parser.add_argument("--steps", default="800", help="comma-separated budgets in steps of 128 (default 800)")
    parser.add_argument("--phase", choices=("train", "eval", "all"), default="all")
    parser.add_argument("--plot", action="store_true", help="only draw the sweep figures from the kept results")
    args = parser.parse_args()
    if args.plot:
        print("figures:", *plot_sweep())
        return
    names = [a for a in args.names if "=" not in a] or list(RUNS)
    extra = [a for a in args.names if "=" in a]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    budgets = [int(s) for s in args.steps.split(",")]
    for steps in budgets:
        if "milan" in names and "clip" not in names and not (WORK_DIR / f"steps-{steps}" / "clip").is_dir():
            raise SystemExit(f"milan distils the clip run of its budget: run clip --steps {steps} first")
    for steps in budgets:
        for name in names:
            if args.phase in ("train", "all"):
                train_one(name, steps, extra)
            if args.phase in ("eval", "all"):
                eval_one(name, steps, extra)
        if args.phase in ("eval", "all"):
            kept = [Path(os.path.relpath(KEPT_DIR / f"steps-{steps}" / n / "results")) for n in RUNS
                    if (KEPT_DIR / f"steps-{steps}" / n / "results").is_dir()]
            print(f"report: {write_report(kept, KEPT_DIR / f'steps-{steps}', floor='random-init')}")


if __name__ == "__main__":
    main()
