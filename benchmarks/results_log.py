"""Where every benchmark's measurements go: one JSON line per run in benchmarks/results/NAME.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def append_result(name: str, record: dict) -> None:
    """Append ``record`` to results/NAME.jsonl."""
    RESULTS_DIR.mkdir(exist_ok=True)
    with (RESULTS_DIR / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
