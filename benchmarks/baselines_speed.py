"""Training images/s of the contrastive baselines beside CLIP, all built in one process and timed
in interleaved rounds, so that a machine's drift or another tenant's load falls on every method
alike; each round's images/s is divided by CLIP's of the same round and precision.

    python benchmarks/baselines_speed.py [--arch vit_s16] [--batch 16] [--rounds 5] [--steps 2]

Steps are whole optimisation steps (forward, backward, optimizer) on synthetic batches (random
images, masking noise, captions and, for SLIP, views). The targets checked: FLIP at patch
dropout 0.5 reaches at least 1.8x CLIP's images/s; the sigmoid loss (SigLIP) costs at most 5%
over CLIP's softmax; SLIP's cost is recorded. One JSON line per run goes to
benchmarks/results/baselines_speed.jsonl.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from results_log import append_result, cpu_name

METHODS = ("clip", "siglip", "flip", "slip")
TARGETS = {"flip": (">=", 1.8), "siglip": (">=", 0.95)}  # images/s over CLIP's


def build_trainers(arch: str, batch: int, precision: str) -> dict:
    from langmim.config import load_config
    from langmim.engine.dryrun import synthetic_batch
    from langmim.engine.loop import Trainer
    from langmim.methods import build_method

    out = {}
    for name in METHODS:
        cfg = load_config(None, [f"model.arch={arch}", f"method={name}", f"train.batch_size={batch}", f"train.precision={precision}",
                                 "train.steps=1000", "output_dir=/tmp/langmim_baselines_speed"])
        torch.manual_seed(0)
        method = build_method(cfg)
        trainer = Trainer(cfg, method, torch.device("cpu"))
        out[name] = (trainer, synthetic_batch(cfg, method, batch))
    return out


def images_per_s(trainer, batch: dict, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(batch)
    return steps * batch["image"].shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_s16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per method and round (default 2)")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    for precision in args.precisions.split(","):
        trainers = build_trainers(args.arch, args.batch, precision)
        for trainer, batch in trainers.values():
            trainer.step(batch)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in METHODS}
        for _ in range(args.rounds):
            for name, (trainer, batch) in trainers.items():
                rates[name].append(images_per_s(trainer, batch, args.steps))
        ratios = {name: statistics.median(r / c for r, c in zip(rates[name], rates["clip"])) for name in METHODS}
        record = {
            "date": date.today().isoformat(), "arch": args.arch, "batch": args.batch, "precision": precision,
            "rounds": args.rounds, "steps": args.steps, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "cpu": cpu_name(),
            "images_per_s": {name: round(statistics.median(r), 2) for name, r in rates.items()},
            "over_clip": {name: round(v, 3) for name, v in ratios.items()},
        }
        append_result("baselines_speed", record)
        for name in METHODS:
            target = TARGETS.get(name)
            verdict = "" if target is None else f"  target {target[0]} {target[1]}: {'met' if ratios[name] >= target[1] else 'MISSED'}"
            print(f"{args.arch} batch {args.batch} {precision:>4}  {name:<7} {record['images_per_s'][name]:8.2f} img/s  "
                  f"{ratios[name]:5.2f}x CLIP{verdict}")


if __name__ == "__main__":
    main()
