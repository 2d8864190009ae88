"""Metrics as JSON lines, the same scalars to TensorBoard and/or Weights & Biases
(``train.report_to``), plus one progress line per interval."""
from __future__ import annotations

import json
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError

NOT_SCALARS = ("step", "time", "data_problems")


class TensorBoardSink:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in ``RUN/wandb``: online where ``WANDB_API_KEY`` is set (or ``WANDB_MODE=online``),
    offline otherwise (upload later with ``wandb sync``). A resumed run continues the same W&B run."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.report_to includes wandb, but the wandb package is not installed: "
                              "pip install wandb, or drop wandb from train.report_to") from None
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
        id_file.write_text(run_id)
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "langmim"), name=run_dir.name, id=run_id, resume="allow",
                              dir=str(run_dir), config=config, mode=mode, settings=wandb.Settings(console="off", silent=True))
        hint = f"; upload with `wandb sync {run_dir / 'wandb'}`" if mode == "offline" else ""
        print(f"W&B: {mode} run {run_id} in {run_dir / 'wandb'}{hint}")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink}


class MetricLogger:
    """Averages the logged scalars over a log interval and writes them on the main rank only."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool,
                 report_to: Sequence[str] = ("tensorboard",), config: dict | None = None) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.images = 0
        self.data_time = 0.0
        self.interval_start = time.perf_counter()
        self.sinks: list = []
        self.bar = None
        if enabled:
            self.path = run_dir / "metrics.jsonl"
            self.sinks = [SINKS[name](run_dir) if name == "tensorboard" else SINKS[name](run_dir, config or {}) for name in report_to]
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=2.0)

    def update(self, scalars: dict[str, float], images: int, data_time: float) -> None:
        for key, value in scalars.items():
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
        scalars = {f"train/{key}": value for key, value in record.items() if key not in NOT_SCALARS}
        for sink in self.sinks:
            sink.log(scalars, step)
        self.bar.set_postfix_str(
            f"loss {record.get('loss', float('nan')):.4f} | {record['images_per_s']:.0f} img/s | lr {lr:.2e}", refresh=False
        )
        return record

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.bar is not None:
            self.bar.close()
