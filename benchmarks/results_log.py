"""Where every benchmark's measurements go: one JSON line per run in benchmarks/results/NAME.jsonl,
each naming the CPU it was measured on."""
from __future__ import annotations

import json
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def append_result(name: str, record: dict, results_dir: Path = RESULTS_DIR) -> None:
    """Append ``record`` to RESULTS_DIR/NAME.jsonl."""
    results_dir.mkdir(parents=True, exist_ok=True)
    with (results_dir / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform reports."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")] if info.is_file() else []
    return names[0] if names else (platform.processor() or platform.machine())
