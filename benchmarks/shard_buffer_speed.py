"""Images/s of the WebDataset loader with and without the sample shuffle buffer, in one process,
timed in interleaved rounds so that other load on the machine falls on both alike.

    python benchmarks/shard_buffer_speed.py [--samples 3000] [--buffer 5000] [--rounds 3]

Writes built-in scenes as shards (64 px PNGs, the img2dataset layout) to a temporary folder once,
then reads one pass of them through ``ShardStream`` (decode, crop, index, and the stream position
that every batch's last sample carries for checkpoints) with
``shuffle_buffer=0`` and with ``--buffer``. One JSON line per run goes to
benchmarks/results/shard_buffer_speed.jsonl.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from results_log import append_result, cpu_name


def images_per_s(spec: str, buffer: int) -> float:
    from langmim.data.shards import ShardStream

    stream = ShardStream(spec, 64, seed=0, rank=0, world_size=1, resampled=False, max_passes=1, shuffle_buffer=buffer,
                         batch_size=128)  # as in training: every 128th sample carries the stream's position for checkpoints
    start = time.perf_counter()
    count = sum(1 for _ in stream)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--buffer", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from langmim.data.shards import write_scene_shards

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        shards = write_scene_shards(Path(folder), args.samples, 500)
        spec = f"{folder}/{{00000..{len(shards) - 1:05d}}}.tar"
        rates: dict[int, list[float]] = {0: [], args.buffer: []}
        for _ in range(args.rounds):
            for buffer in rates:
                rates[buffer].append(images_per_s(spec, buffer))
    plain, buffered = statistics.median(rates[0]), statistics.median(rates[args.buffer])
    record = {"date": date.today().isoformat(), "samples": args.samples, "buffer": args.buffer, "rounds": args.rounds,
              "cpu": cpu_name(), "torch": torch.__version__, "images_per_s": {"unbuffered": round(plain, 1), "buffered": round(buffered, 1)},
              "buffered_over_unbuffered": round(buffered / plain, 3)}
    append_result("shard_buffer_speed", record)
    print(f"unbuffered {plain:.1f} img/s, buffer {args.buffer}: {buffered:.1f} img/s ({buffered / plain:.2f}x; target: within 10%)")


if __name__ == "__main__":
    main()
