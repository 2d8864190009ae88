"""Reading result files into the report's columns: langmim's and CLIP_benchmark's result JSONs,
runs grouped by model (and seed, from a seed-K folder or the recorded train seed), headed by the
checkpoint step."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import LangmimError
from ..eval.clip_benchmark import from_clip_benchmark

Seeds = dict[int, dict[str, dict]]  # one column: seed -> {task: result}
SEED_DIR = re.compile(r"seed[-_]?(\d+)")


def read_results(results_dir: Path) -> dict[str, dict[str, dict]]:
    """{model name: {task: result}} from the result JSONs of a directory: langmim's own, and
    CLIP_benchmark's (its ``clip_benchmark/`` sub-folder of a run, or anyone's published files)."""
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise LangmimError(f"result file '{path}' is not valid JSON") from None
        result = from_clip_benchmark(result) or result
        if {"model", "task", "metrics"} <= set(result):
            found.setdefault(result["model"], {})[result["task"]] = result
    return found


def results_dir_of(run_dir: Path) -> Path:
    """A run's ``results/`` folder, or the directory itself when it is one."""
    return run_dir / "results" if (run_dir / "results").is_dir() else run_dir


def read_runs(run_dirs: list[Path]) -> list[tuple[Path, str, dict[str, dict]]]:
    """(run directory, model name, {task: result}) for every model whose results a run holds."""
    runs = []
    for run_dir in run_dirs:
        results_dir = results_dir_of(run_dir)
        if not results_dir.is_dir():
            raise LangmimError(f"'{run_dir}' is not a run directory or a results directory")
        found = read_results(results_dir)
        if not found:
            raise LangmimError(f"no result JSONs in '{results_dir}'; run langmim eval --checkpoint {run_dir} first")
        runs += [(run_dir, model, results) for model, results in found.items()]
    return runs


def seed_folder(run_dir: Path) -> tuple[int, str] | None:
    """The nearest seed-K (seedK, seed_K) folder of the path given for a run: K, and the name of
    the folder it is in (the model's, in runs/clip/seed-0)."""
    for folder in (run_dir, *run_dir.parents):
        if match := SEED_DIR.fullmatch(folder.name):
            return int(match.group(1)), Path(os.path.abspath(folder)).parent.name
    return None


def recorded_seed(run_dir: Path, results: dict[str, dict]) -> int:
    """The train seed a run's results record (``seeds.train``; ``config.train.seed`` in older
    files), 0 when they record none (an external model's published results)."""
    recorded = {r.get("seeds", {}).get("train", r.get("config", {}).get("train", {}).get("seed")) for r in results.values()} - {None}
    if len(recorded) > 1:
        raise LangmimError(f"the results in '{run_dir}' record train seeds {', '.join(map(str, sorted(recorded)))}; "
                           "keep one seed's results per run directory")
    return recorded.pop() if recorded else 0


def run_name(run_dir: Path) -> str:
    """The run directory's name, also when the path given is its ``results/`` folder."""
    return run_dir.parent.name if run_dir.name == "results" else run_dir.name


def group_runs(runs: list[tuple[Path, str, dict[str, dict]]], seeds: bool) -> dict[str, Seeds]:
    """Columns, before their checkpoint step is added. With ``seeds``: one per model name, its
    runs keyed by seed (the seed-K folder of the path, else the recorded train seed); a model
    named after its seed folder takes the name of the folder above. Without: one per run, as
    seed 0; a model's second run is headed "model (run name)", or "model (path)" when that is
    taken too."""
    columns: dict[str, Seeds] = {}
    where: dict[tuple[str, int], Path] = {}
    for run_dir, model, results in runs:
        if not seeds:
            name = next((n for n in (model, f"{model} ({run_name(run_dir)})") if n not in columns), f"{model} ({run_dir})")
            columns[name] = {0: results}
            continue
        folder = seed_folder(run_dir)
        seed = folder[0] if folder else recorded_seed(run_dir, results)
        if folder and SEED_DIR.fullmatch(model):  # `langmim eval` filed runs/clip/seed-0 under "seed-0"
            model = folder[1]
        if (model, seed) in where:
            raise LangmimError(f"'{where[model, seed]}' and '{run_dir}' both hold seed {seed} of model '{model}'; "
                               "put each seed's run in its own seed-K directory")
        where[model, seed] = run_dir
        columns.setdefault(model, {})[seed] = results
    return columns


def step_label(name: str, runs: Seeds) -> tuple[str, str | None]:
    """A column's heading with the checkpoint step(s) of its results, and a warning when they differ."""
    steps = sorted({r["step"] for results in runs.values() for r in results.values() if r.get("step") is not None})
    if not steps:
        return name, None
    listed = ", ".join(map(str, steps))
    label = f"{name} (step{'s' if len(steps) > 1 else ''} {listed})"
    if len(steps) == 1:
        return label, None
    return label, f"column '{label}' mixes results of checkpoint steps {listed}: re-run `langmim eval` on one checkpoint for a comparable column"


def labelled_columns(grouped: dict[str, Seeds]) -> tuple[dict[str, Seeds], dict[str, str], list[str]]:
    """The columns under their headings (with the checkpoint step), each name's heading, and
    the warnings about columns that mix steps."""
    columns: dict[str, Seeds] = {}
    labels: dict[str, str] = {}
    warnings: list[str] = []
    for name, runs in grouped.items():
        label, warning = step_label(name, runs)
        labels[name], columns[label] = label, runs
        warnings += [warning] if warning else []
    return columns, labels, warnings


def find_column(name: str | None, labels: dict[str, str]) -> str | None:
    """The column a model name (or a whole column heading) names, if any."""
    return labels.get(name) or (name if name in labels.values() else None)
