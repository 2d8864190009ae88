"""Frozen towers in bf16 on a CPU: the two slow paths, and langmim's way around them.

    python benchmarks/frozen_towers.py        # about 3 minutes on 2 cores; prints one JSON line per figure

1. ``F.linear`` of a transposed 3-D input (what ``nn.MultiheadAttention``'s unfused path passes its
   in-projection), with a weight that requires grad or not, in fp32 and bf16: torch's ``matmul``
   folds the batch into one GEMM only for a weight that requires grad.
2. MILAN's teacher (OpenAI CLIP ViT-B/16 shape, QuickGELU, random weights, batch 16): its forward
   in fp32; under autocast as a plain frozen module (what ran before langmim cast it); and through
   ``Teacher.forward``, which casts once and runs with autocast off.
3. A ViT-S/16 CLIP training step of 16 with the text tower locked (LiT) or not, in fp32 and bf16.
Results go to benchmarks/results/frozen_towers.jsonl.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import date

import torch
import torch.nn.functional as F

from results_log import append_result


def seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def linear_rows() -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(16, 77, 512, dtype=dtype).transpose(0, 1)
        for requires_grad in (False, True):
            w = torch.randn(1536, 512, dtype=dtype, requires_grad=requires_grad)
            b = torch.randn(1536, dtype=dtype)
            with torch.no_grad():
                ms = 1000 * seconds(lambda: F.linear(x, w, b), 10)  # noqa: B023
            rows.append({"figure": "linear_transposed_input", "dtype": str(dtype).split(".")[1], "weight_requires_grad": requires_grad,
                         "ms": round(ms, 2)})
    return rows


def teacher_rows() -> list[dict]:
    from langmim.engine.precision import autocast, cpu_attention_in_fp32
    from langmim.models.teacher import OpenCLIPTeacher

    logging.disable(logging.WARNING)
    cpu = torch.device("cpu")
    images = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        old = OpenCLIPTeacher("ViT-B-16-quickgelu", None)
        rows.append({"figure": "teacher_forward", "path": "fp32", "s": round(seconds(lambda: old(images), 2), 3)})
        with cpu_attention_in_fp32(cpu, "bf16"), autocast(cpu, "bf16"):
            plain = seconds(lambda: old.encode(old.prepare(images)), 2)  # a frozen module under autocast
            rows.append({"figure": "teacher_forward", "path": "bf16 autocast, frozen fp32 weights", "s": round(plain, 3)})
            rows.append({"figure": "teacher_forward", "path": "bf16 Teacher.forward (cast once)", "s": round(seconds(lambda: old(images), 2), 3)})
    return rows


def lit_rows() -> list[dict]:
    from langmim.config import load_config
    from langmim.engine.dryrun import synthetic_batch
    from langmim.engine.loop import Trainer
    from langmim.methods import build_method

    rows = []
    for lock in (False, True):
        for precision in ("fp32", "bf16"):
            cfg = load_config(None, ["model.arch=vit_s16", "method=clip", "train.batch_size=16", "output_dir=/tmp/langmim_frozen",
                                     f"train.precision={precision}", f"init.lock_text={str(lock).lower()}"])
            torch.manual_seed(0)
            method = build_method(cfg)
            trainer = Trainer(cfg, method, torch.device("cpu"))
            batch = synthetic_batch(cfg, method, 16)
            rows.append({"figure": "clip_vit_s16_step", "text_locked": lock, "precision": precision,
                         "s": round(seconds(lambda: trainer.step(batch), 3), 3)})  # noqa: B023
    return rows


def main() -> None:
    for row in linear_rows() + teacher_rows() + lit_rows():
        record = {"date": date.today().isoformat(), "threads": torch.get_num_threads(), "torch": torch.__version__, **row}
        append_result("frozen_towers", record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
