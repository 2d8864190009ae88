"""Pre-train with the demo preset plus overrides, then score zero-shot and k-NN on a subset.

The quick loop used to size the demo (benchmarks/README.md, "The demo"):
    python benchmarks/demo_trial.py NAME [key=value ...]
    e.g. python benchmarks/demo_trial.py plain08 model.patch_size=16 data.plain_share=0.8
Trains into /tmp/demo_trial_NAME, evaluates on the first 2,000 Fashion-MNIST test images (k-NN
fit on 5,000 train images) and prints one line with the wall times and the top-1 figures.
"""
from __future__ import annotations

import shutil
import sys
import time

from langmim.api import load
from langmim.config import load_config
from langmim.engine.loop import pretrain
from langmim.eval.suite import evaluate, headline_value


def main() -> None:
    name, overrides = sys.argv[1], sys.argv[2:]
    out = f"/tmp/demo_trial_{name}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("demo", [f"output_dir={out}", "train.log_every=20", "train.ckpt_every=100000", *overrides])
    start = time.time()
    pretrain(cfg, log_tensorboard=False)
    train_s = time.time() - start
    cfg.eval.test_size, cfg.eval.probe_train_size = 2000, 5000
    start = time.time()
    results = evaluate(load(out), ["zeroshot", "knn"], cfg.eval, None, name, log=lambda _: None)
    scores = {task: round(headline_value(r), 1) for task, r in results.items()}
    print(name, overrides, f"train {train_s:.0f}s eval {time.time() - start:.0f}s", scores, flush=True)


if __name__ == "__main__":
    main()
