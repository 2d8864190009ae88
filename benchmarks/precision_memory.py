"""Effect of bf16 autocast and gradient checkpointing on the demo's RILS training step.

    python benchmarks/precision_memory.py [key=value ...]

Each setting runs in a fresh process (peak resident memory is per process): 5 warm-up steps
(timed apart: they include torch.compile's compilation), then 20 timed steps on pre-built batches; prints one line per setting and appends it to
benchmarks/results/precision_memory.jsonl.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from datetime import date

import torch

from results_log import append_result

SETTINGS = {
    "fp32": ["train.precision=fp32"],
    "bf16": ["train.precision=bf16"],
    "fp32+grad_checkpointing": ["train.precision=fp32", "train.grad_checkpointing=true"],
    "bf16+grad_checkpointing": ["train.precision=bf16", "train.grad_checkpointing=true"],
    "fp32+compile": ["train.precision=fp32", "train.compile=true"],
}


def measure(overrides: list[str]) -> dict:
    from langmim.config import load_config
    from langmim.data.pretrain import build_pretrain_loader
    from langmim.engine.loop import Trainer, move
    from langmim.methods import build_method
    from langmim.models.text import build_tokenizer

    cfg = load_config("demo", ["output_dir=/tmp/precision_memory", "train.steps=25", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, with_teacher=True)
    method.set_grad_checkpointing(cfg.train.grad_checkpointing)
    if cfg.train.compile:
        method.compile_towers()
    trainer = Trainer(cfg, method, torch.device("cpu"))
    loader = build_pretrain_loader(cfg, build_tokenizer(cfg.model.context_length), method.visual.num_patches, 0,
                                   scene_labels=method.needs_scene_labels, views=method.spec.needs_views)
    batches = [move(b, torch.device("cpu")) for b in loader]
    start = time.perf_counter()
    for batch in batches[:5]:
        trainer.step(batch)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches[5:]:
        trainer.step(batch)
    seconds = (time.perf_counter() - start) / len(batches[5:])
    return {"images_per_s": round(cfg.train.batch_size / seconds, 1), "step_ms": round(1000 * seconds, 1),
            "warmup_5_steps_s": round(warmup, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2:])))
        return
    for name, overrides in SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--one", *sys.argv[1:], *overrides], capture_output=True, text=True, check=True)
        record = {"date": date.today().isoformat(), "setting": name, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, **json.loads(out.stdout.strip().splitlines()[-1])}
        append_result("precision_memory", record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
