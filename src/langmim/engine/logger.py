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
from ..files import WriteFailed, failure_line, open_no_follow, refuse_link, write_atomic, write_failure

NOT_SCALARS = ("step", "time", "data_problems")


class TensorBoardSink:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        refuse_link(run_dir / "tensorboard")
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
        write_atomic(id_file, run_id)
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
TORN_SUFFIX = ".torn"  # metrics.jsonl.torn: lines a crash or a full disk left incomplete, set aside


class MetricsFile:
    """``metrics.jsonl``, appended one whole line per write and never through a link. Opening it
    for a run that starts at ``start_step`` sets aside a torn line (a crash or a full disk
    mid-write) into ``metrics.jsonl.torn`` and drops records after ``start_step`` (logged after the
    checkpoint a resumed run starts from, and about to be logged again), so no step appears twice."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        refuse_link(path)
        if path.is_file():
            self._repair(start_step)
        try:
            self.fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as err:
            raise WriteFailed(failure_line(path, write_failure(err, path.parent))) from None

    def _repair(self, start_step: int) -> None:
        *lines, tail = self.path.read_bytes().split(b"\n")  # tail: empty unless the last line is torn
        kept, torn, later = [], [tail] if tail.strip() else [], 0
        for line in filter(bytes.strip, lines):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                torn.append(line)
            elif record.get("step", 0) > start_step:
                later += 1
            else:
                kept.append(line)
        if torn:
            aside = self.path.with_name(self.path.name + TORN_SUFFIX)
            earlier = aside.read_bytes() if aside.is_file() and not aside.is_symlink() else b""
            write_atomic(aside, earlier + b"".join(line + b"\n" for line in torn))
            print(f"{self.path.name}: set aside {len(torn)} torn line(s) into {aside.name}")
        if later:
            print(f"{self.path.name}: dropped {later} record(s) logged after step {start_step}, the step this run resumes from")
        if torn or later:
            write_atomic(self.path, b"".join(line + b"\n" for line in kept))

    def append(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as err:
            raise WriteFailed(failure_line(self.path, write_failure(err, self.path.parent))) from None

    def close(self) -> None:
        os.close(self.fd)


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
        self.log: MetricsFile | None = None
        if enabled:
            self.log = MetricsFile(run_dir / "metrics.jsonl", start_step)
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
        if self.log is None:
            return None
        self.log.append(record)
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
        if self.log is not None:
            self.log.close()
