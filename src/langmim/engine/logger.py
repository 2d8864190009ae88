"""Metrics as JSON lines and TensorBoard scalars, plus one progress line per interval."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm


class MetricLogger:
    """Averages figures over a log interval and writes them on the main rank only."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.images = 0
        self.data_time = 0.0
        self.interval_start = time.perf_counter()
        self.writer = None
        self.bar = None
        if enabled:
            self.path = run_dir / "metrics.jsonl"
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=2.0)

    def update(self, figures: dict[str, float], images: int, data_time: float) -> None:
        for key, value in figures.items():
            self.sums[key] += value
        self.count += 1
        self.images += images
        self.data_time += data_time
        if self.bar is not None:
            self.bar.update(1)

    def flush(self, step: int, lr: float, data_problems: dict[str, int] | None = None) -> dict | None:
        """Write the interval's means (and the run's bad-sample counts so far); returns the
        record (None off the main rank)."""
        elapsed = time.perf_counter() - self.interval_start
        record = {"step": step, "lr": lr}
        record.update({k: v / max(1, self.count) for k, v in self.sums.items()})
        record["images_per_s"] = self.images / max(elapsed, 1e-9)
        record["data_wait_share"] = self.data_time / max(elapsed, 1e-9)
        record["time"] = time.time()
        if data_problems:
            record["data_problems"] = data_problems
        self.sums.clear()
        self.count = self.images = 0
        self.data_time = 0.0
        self.interval_start = time.perf_counter()
        if not self.enabled:
            return None
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time", "data_problems"):
                    self.writer.add_scalar(f"train/{key}", value, step)
        self.bar.set_postfix_str(
            f"loss {record.get('loss', float('nan')):.4f} | {record['images_per_s']:.0f} img/s | lr {lr:.2e}", refresh=False
        )
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
