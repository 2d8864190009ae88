"""What ``train.compile=true`` buys each method: the demo-size training step eager and compiled.

    python benchmarks/compile_speed.py [--methods mae,clip] [key=value ...]

Each (method, setting) runs in a fresh process through ``precision_memory.py --one`` (5 warm-up
steps, timed apart since they include compilation, then 20 timed steps on pre-built batches).
MILAN distils a one-step CLIP run made first as its teacher. Prints one line per method with the
compiled/eager speed ratio and appends it to benchmarks/results/compile_speed.jsonl.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

from results_log import append_result

HERE = Path(__file__).parent


def one(overrides: list[str]) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "precision_memory.py"), "--one", *overrides],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from langmim.method_specs import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; default: every registered method")
    parser.add_argument("overrides", nargs="*", help="key=value for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher"
        subprocess.run([sys.executable, "-m", "langmim.cli", "pretrain", "--no-tensorboard", "method=clip", "train.steps=1",
                        f"output_dir={teacher}"], check=True, capture_output=True)
        for method in args.methods.split(","):
            base = [f"method={method}", "train.precision=fp32", *args.overrides]
            base += [f"milan.teacher.source=langmim:{teacher}"] if method == "milan" else []
            eager, compiled = one([*base, "train.compile=false"]), one([*base, "train.compile=true"])
            record = {"date": date.today().isoformat(), "method": method, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "eager_step_ms": eager["step_ms"], "compiled_step_ms": compiled["step_ms"],
                      "compile_warmup_5_steps_s": compiled["warmup_5_steps_s"],
                      "speedup": round(eager["step_ms"] / compiled["step_ms"], 2)}
            append_result("compile_speed", record)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
