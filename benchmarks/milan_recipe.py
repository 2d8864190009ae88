"""The built-in two-stage MILAN recipe against MAE at the same encoder size and budget.

    python benchmarks/milan_recipe.py VARIANT [key=value ...]

Stage 1 is the demo's RILS run (`make demo` writes runs/demo); each VARIANT trains the
`milan_demo` preset's budget into /tmp/milan_recipe_VARIANT and scores k-NN and the linear probe
on the 10,000 Fashion-MNIST test images (probes fit on 20,000 train images), appending one JSON
line to benchmarks/results/milan_recipe.jsonl:
    mae               method=mae (no teacher)
    milan-attention   semantic-aware masking by the teacher's CLS attention (the paper)
    milan-similarity  ... by each patch's similarity to the teacher's pooled embedding
    milan-random      random masking (the paper's ablation)
"""
from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from datetime import date

import torch

from langmim.api import load
from langmim.config import load_config
from langmim.engine.loop import pretrain
from langmim.eval.suite import evaluate
from results_log import append_result

VARIANTS = {
    "mae": ["method=mae"],
    "milan-attention": ["milan.teacher.importance=attention"],
    "milan-similarity": ["milan.teacher.importance=similarity"],
    "milan-random": ["milan.masking=random"],
}


def main() -> None:
    variant, extra = sys.argv[1], sys.argv[2:]
    if variant not in VARIANTS:
        sys.exit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    out = f"/tmp/milan_recipe_{variant}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"output_dir={out}", *VARIANTS[variant], *extra]
    cfg = load_config("milan_demo", overrides)
    start = time.time()
    pretrain(cfg, log_tensorboard=False)
    train_s = time.time() - start
    results = evaluate(load(out), ["knn", "linear"], cfg.eval, None, variant, log=lambda _: None)
    record = {
        "date": date.today().isoformat(), "variant": variant, "overrides": overrides, "steps": cfg.train.steps,
        "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(),
        **{f"{task}_{k}": round(v, 2) for task, r in results.items() for k, v in r["metrics"].items()
           if k in ("mean_top1_k20", "cls_top1_k20", "mean_top1", "cls_top1")},
    }
    append_result("milan_recipe", record)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
