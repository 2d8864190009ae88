"""Where a training step's time goes: torch.profiler's table of the ops with the most self time.

    python benchmarks/profile_step.py METHOD SHAPE BATCH [fp32|bf16] [--rows N]
    e.g. python benchmarks/profile_step.py clip vit_s16 16 bf16

Builds the setting as benchmarks/throughput.py does, takes two warm-up steps on a synthetic
batch, then profiles two steps and prints the table (self CPU time, calls, input shapes off).
"""
from __future__ import annotations

import argparse

import torch
from throughput import SHAPES, teacher_checkpoint
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("batch", type=int)
    parser.add_argument("precision", nargs="?", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    from langmim.config import load_config
    from langmim.engine.dryrun import synthetic_batch
    from langmim.engine.loop import Trainer
    from langmim.methods import build_method

    overrides = [*SHAPES[args.shape], f"method={args.method}", f"train.batch_size={args.batch}",
                 f"train.precision={args.precision}", "output_dir=/tmp/langmim_profile"]
    if args.method == "milan":
        overrides.append(f"milan.teacher.source=langmim:{teacher_checkpoint(args.shape, None)}")
    cfg = load_config(None, overrides)
    method = build_method(cfg, with_teacher=True)
    trainer = Trainer(cfg, method, torch.device("cpu"))
    batch = synthetic_batch(cfg, method, args.batch)
    for _ in range(2):
        trainer.step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            trainer.step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
