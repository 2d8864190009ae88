"""Measure the pre-training input pipeline's images/s beside the training step's images/s.

The loader must never starve training. The loader is timed as `throughput.py` times it (median
batch, so the first batches' one-off resizing of every Fashion-MNIST item does not count), but
on any config and data source, with `data.num_workers` as given. Usage:
    python benchmarks/loader_vs_step.py [--config demo] [key=value ...]
Prints one JSON line and appends it to benchmarks/results/loader_vs_step.jsonl.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from throughput import loader_images_per_s

from langmim.config import load_config, to_dict
from langmim.data.pretrain import build_pretrain_loader
from langmim.engine.loop import Trainer, move
from langmim.methods import build_method
from langmim.models.text import build_tokenizer
from results_log import append_result


def images_per_second(batches, count: int, work) -> float:
    iterator = iter(batches)
    work(next(iterator))  # warm-up: caches, allocator, first-call overheads
    start = time.perf_counter()
    images = 0
    for _ in range(count):
        batch = next(iterator)
        work(batch)
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--batches", type=int, default=10, help="training steps timed: half this")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    cfg.train.steps = max(cfg.train.steps, 1000)  # enough batches for the loader's timing
    method = build_method(cfg)
    loader_rate = loader_images_per_s(cfg, method)
    trainer = Trainer(cfg, method, torch.device("cpu"))
    tokenizer = build_tokenizer(cfg.model.context_length, cfg.init.text) if method.has_text else None
    fixed = next(iter(build_pretrain_loader(cfg, tokenizer, method.visual.num_patches, start_step=0)))
    step_rate = images_per_second(iter(lambda: fixed, None), args.batches // 2 or 1, lambda b: trainer.step(move(b, torch.device("cpu"))))
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "method": cfg.method, "arch": cfg.model.arch, "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision, "num_workers": cfg.data.num_workers,
        "loader_images_per_s": round(loader_rate, 1), "train_step_images_per_s": round(step_rate, 1),
        "loader_to_step_ratio": round(loader_rate / step_rate, 1),
        "config": to_dict(cfg),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "config"}))
    append_result("loader_vs_step", record)


if __name__ == "__main__":
    main()
