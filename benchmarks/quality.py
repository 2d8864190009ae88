"""Equal-budget quality comparison: MAE, CLIP, RILS and MILAN (teacher: the CLIP run) on
fashion-scenes with the same encoder, data and number of steps, then the whole evaluation suite
on each and on a randomly initialised encoder (the floor).

    python benchmarks/quality.py [METHOD ...] [key=value ...]

METHOD is any of clip, rils, mae, milan, random-init (default: all, in that order; milan needs the
clip run). Checkpoints go to /tmp/langmim_quality/METHOD; what is kept in the repository is small:
each run's training log (metrics.jsonl), its merged config, the result JSON of every task
(benchmarks/results/quality/METHOD/), one
summary line per run in benchmarks/results/quality.jsonl, and benchmarks/results/quality/report.md
with the comparison table and the few-shot plot.

Optimiser settings follow each family's preset: CLIP and RILS use the demo's (lr 5e-4, betas
0.9/0.98, open_clip's), MAE and MILAN the milan_demo preset's (lr 1e-3, betas 0.9/0.95, MAE's).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
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
from langmim.report import write_report
from results_log import RESULTS_DIR, append_result

WORK_DIR = Path("/tmp/langmim_quality")
KEPT_DIR = RESULTS_DIR / "quality"
RUNS = {  # name: (preset, overrides)
    "clip": ("demo", ["method=clip"]),
    "rils": ("demo", ["method=rils"]),
    "mae": ("milan_demo", ["method=mae"]),
    "milan": ("milan_demo", [f"teacher.source=langmim:{WORK_DIR / 'clip'}"]),
    "random-init": ("demo", ["method=rils"]),
}


def run_one(name: str, extra: list[str]) -> dict:
    preset, overrides = RUNS[name]
    out = WORK_DIR / name
    # fp32 for every run: the recorded table was measured so (the demo preset now picks bf16 where native)
    cfg = load_config(preset, [f"output_dir={out}", "train.ckpt_every=200", "train.precision=fp32", *overrides, *extra])
    kept = KEPT_DIR / name
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    train_s = 0.0
    shutil.rmtree(out, ignore_errors=True)
    if name == "random-init":
        model = random_init_model(cfg)
    else:
        start = time.perf_counter()
        pretrain(cfg, log_tensorboard=False)
        train_s = time.perf_counter() - start
        for log in ("metrics.jsonl", "config.yaml"):
            shutil.copy(out / log, kept / log)
        model = load(out)
    start = time.perf_counter()
    results = evaluate(model, list(TASKS), cfg.eval, out / "results", name, cfg.data.root)
    eval_s = time.perf_counter() - start
    (kept / "results").mkdir()
    for result in (out / "results").glob("*.json"):
        shutil.copy(result, kept / "results" / result.name)
    record = {
        "date": date.today().isoformat(), "run": name, "preset": preset, "overrides": overrides + extra,
        "steps": 0 if name == "random-init" else cfg.train.steps, "batch_size": cfg.train.batch_size,
        "images_seen": 0 if name == "random-init" else cfg.train.steps * cfg.train.batch_size,
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "langmim": __version__,
        "machine": platform.machine(),
        "metrics": {task: {k: round(v, 2) for k, v in r["metrics"].items() if isinstance(v, (int, float))}
                    for task, r in results.items()},
    }
    append_result("quality", record)
    print(json.dumps({k: v for k, v in record.items() if k != "metrics"}), flush=True)
    return record


def main() -> None:
    names = [a for a in sys.argv[1:] if "=" not in a] or list(RUNS)
    extra = [a for a in sys.argv[1:] if "=" in a]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if "milan" in names and "clip" not in names and not (WORK_DIR / "clip").is_dir():
        sys.exit(f"milan distils the clip run: run clip first (no {WORK_DIR / 'clip'})")
    for name in names:
        run_one(name, extra)
    kept = [Path(os.path.relpath(KEPT_DIR / n / "results")) for n in RUNS if (KEPT_DIR / n / "results").is_dir()]
    print(f"report: {write_report(kept, KEPT_DIR)}")


if __name__ == "__main__":
    main()
