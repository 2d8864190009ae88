"""What the checkpoint digest costs: ``atomic_save`` of a ViT-B/16 CLIP training state (model and
AdamW moments, as ``train.checkpoint_format=file`` writes it) with and without its digest.

    python benchmarks/checkpoint_digest.py [--reps 5] [--dir DIR]

The two writes alternate, ``--reps`` times each, into DIR (default: a temporary folder under
runs/, the disk runs are written to), each fsynced; the medians and their ratio are printed and
appended to benchmarks/results/checkpoint_digest.jsonl. Disk writes vary by tens of percent from
one to the next, more than the digest costs, so the CPU work the digest adds is timed apart too:
xxh3-128 over the file's bytes in memory (``hash_s``, and ``hash_share`` of the plain write's
median), with the time ``load_checkpoint`` spends verifying a file (read back from disk).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import xxhash

from results_log import append_result, cpu_name


def vit_b16_state() -> dict:
    """The clip_vit_b16 preset's method and an AdamW state of its shape (moments as after a step)."""
    from langmim.config import load_config
    from langmim.methods import build_method

    method = build_method(load_config("clip_vit_b16", ["output_dir=/tmp/unused"]))
    model = method.state_dict()
    moments = {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
               for i, p in enumerate(method.parameters())}
    return {"format": "langmim", "model": model, "optimizer": {"state": moments, "param_groups": []}}



def main() -> None:
    from langmim.io import atomic_save, file_digest

    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    state = vit_b16_state()
    Path(args.dir or "runs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir or "runs") as folder:
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.reps):
            for digest in (False, True):
                path = Path(folder) / f"checkpoint-{int(digest)}.pt"
                start = time.perf_counter()
                atomic_save(state, path, digest=digest)
                seconds[digest].append(time.perf_counter() - start)
        start = time.perf_counter()
        file_digest(Path(folder) / "checkpoint-1.pt")
        verify = time.perf_counter() - start
        data = (Path(folder) / "checkpoint-1.pt").read_bytes()
        start = time.perf_counter()
        xxhash.xxh3_128(data).hexdigest()
        hashing = time.perf_counter() - start
        size = len(data)
    plain, hashed = statistics.median(seconds[False]), statistics.median(seconds[True])
    record = {"date": date.today().isoformat(), "cpu": cpu_name(), "bytes": size,
              "write_s": round(plain, 3), "write_with_digest_s": round(hashed, 3), "overhead": round(hashed / plain - 1, 4),
              "hash_s": round(hashing, 4), "hash_share": round(hashing / plain, 4), "verify_s": round(verify, 3), "reps": args.reps,
              "all_s": {str(k): [round(s, 3) for s in v] for k, v in seconds.items()}}
    append_result("checkpoint_digest", record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
