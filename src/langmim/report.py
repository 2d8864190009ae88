"""Human-readable reports: markdown tables and PNG figures from a run's metrics and result
files. It reads files only (no model runs here), so ``langmim report`` starts without torch;
matplotlib is imported when a figure is drawn."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import LangmimError
from .eval.clip_benchmark import from_clip_benchmark
from .stats import Interval, mean_interval, paired_verdict


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(metrics_path: Path, png: Path) -> None:
    """One panel per logged loss term (and RILS's share of samples with c_i = 1)."""
    plt = pyplot()
    records = read_metrics(metrics_path)
    keys = [k for k in ("loss", "loss_clip", "loss_rec", "match_rate") if k in records[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [r[key] for r in records], color="tab:blue")
        titles = {"match_rate": "share of samples with c_i = 1", "loss_rec": "loss_rec (samples with c_i = 1)"}
        ax.set_title(titles.get(key, key))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# (label, task, metric key) of the summary table, in reading order.
TABLE_ROWS = (
    ("zero-shot top-1 (%)", "zeroshot", "top1"),
    ("retrieval R@1 image->text (%)", "retrieval", "image_to_text_R@1"),
    ("retrieval R@1 text->image (%)", "retrieval", "text_to_image_R@1"),
    ("k-NN top-1, k=20, patch mean (%)", "knn", "mean_top1_k20"),
    ("k-NN top-1, k=20, CLS (%)", "knn", "cls_top1_k20"),
    ("linear probe top-1, patch mean (%)", "linear", "mean_top1"),
    ("linear probe top-1, CLS (%)", "linear", "cls_top1"),
    ("few-shot 1-shot, prototype, patch mean (%)", "fewshot", "mean_prototype_1shot"),
    ("few-shot 16-shot, logistic, patch mean (%)", "fewshot", "mean_logistic_16shot"),
    ("fine-tuning top-1 (%)", "finetune", "top1"),
    ("scene presence mAP, patch mean (%)", "presence", "mean_map"),
    ("scene presence 4-shot mAP, patch mean (%)", "presence", "mean_lowshot_4"),
    ("garment per occupied cell (%)", "cells", "occupied_accuracy"),
    ("colour of a named garment, patch mean (%)", "binding", "mean_top1"),
    ("item count, patch mean (%)", "counting", "mean_top1"),
    ("compositional zero-shot, mean over kinds (%)", "compositional", "mean_acc"),
    ("detection AP50 (%)", "detection", "ap50"),
    ("detection AP (%)", "detection", "ap"),
    ("segmentation mIoU (%)", "segmentation", "miou"),
    ("segmentation foreground mIoU (%)", "segmentation", "foreground_miou"),
    ("shifted renders: linear probe, mean of styles (%)", "shift", "linear_shifted_mean"),
    ("shifted renders: zero-shot, mean of styles (%)", "shift", "zeroshot_shifted_mean"),
)
NO_TEXT_TASKS = ("zeroshot", "retrieval", "compositional")


Seeds = dict[int, dict[str, dict]]  # one column: seed -> {task: result}
MIN_GAP = 0.01  # points: a floor-to-ceiling gap narrower than the table prints has no meaningful share


def metric_values(runs: Seeds, task: str, key: str) -> dict[int, float]:
    """Seed -> one metric, for the seeds of a column whose results have it."""
    values = {seed: results.get(task, {}).get("metrics", {}).get(key) for seed, results in runs.items()}
    return {seed: value for seed, value in values.items() if value is not None}


def mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values)


def format_interval(interval: Interval, signed: bool = False) -> str:
    """A single run as its value; several as "mean ± half-width (n=K)"."""
    value = f"{interval.mean:+.2f}" if signed else f"{interval.mean:.2f}"
    return value if interval.n == 1 else f"{value} ± {interval.half_width:.2f} (n={interval.n})"


def value_cell(values: dict[int, float]) -> str:
    """One run's value (printed as is, even nan); several seeds' mean and interval."""
    return f"{mean(values):.2f}" if len(values) == 1 else format_interval(mean_interval(list(values.values())))


def margin_cell(values: dict[int, float], floor: dict[int, float]) -> str:
    """A model's margin over the floor, in points: the difference of their means."""
    return f"{mean(values) - mean(floor):+.2f}" if values and floor else "n/a"


def share_cell(values: dict[int, float], floor: dict[int, float], ceiling: dict[int, float]) -> str:
    """How much of the floor-to-ceiling gap a model closes, in percent of the gap (from the means)."""
    if not (values and floor and ceiling) or abs(mean(ceiling) - mean(floor)) < MIN_GAP:
        return "n/a"
    return f"{100 * (mean(values) - mean(floor)) / (mean(ceiling) - mean(floor)):.0f}%"


def paired_values(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], list[float]]:
    """A's and B's values paired by seed, seeds only one side has left out; a side with a single
    run (e.g. a random-init floor) is paired with every seed of the other."""
    if len(b) == 1:
        return list(a.values()), list(b.values()) * len(a)
    if len(a) == 1:
        return list(a.values()) * len(b), list(b.values())
    shared = sorted(a.keys() & b.keys())
    return [a[seed] for seed in shared], [b[seed] for seed in shared]


def verdict_cell(a: dict[int, float], b: dict[int, float]) -> str:
    """A - B over paired seeds with its interval and ``paired_verdict``'s word for it."""
    if not (a and b):
        return "n/a"
    a_values, b_values = paired_values(a, b)
    if not a_values:
        return "n/a, no shared seeds"
    verdict = paired_verdict(a_values, b_values)
    return f"{format_interval(verdict.difference, signed=True)}, {verdict.verdict}"


def comparison_table(
    columns: dict[str, Seeds], has_text: dict[str, bool] | None = None, floor: str | None = None,
    ceiling: str | None = None, compare: Sequence[tuple[str, str]] = (),
) -> str:
    """Markdown table: one row per metric that any model has, one column per model (its seeds'
    results keyed by task; several seeds read "mean ± half-width (n=K)", the 95% t interval).
    A text task of a model without a text tower reads "n/a, no text tower". With ``floor`` (a
    column's name, e.g. the random-init model), each other model also gets a column of its
    margin over the floor, in points; with ``ceiling`` too (e.g. the supervised model), one of
    its share of the floor-to-ceiling gap. ``compare`` (pairs of column names) adds a column of
    A - B over paired seeds and its verdict (see ``paired_values``)."""
    names = list(columns)
    others = [n for n in names if n != floor] if floor in columns else []
    closing = [n for n in others if n != ceiling] if ceiling in columns else []
    header = names + [f"{n} minus {floor}" for n in others] + [f"{n} share of {floor} to {ceiling} gap" for n in closing]
    header += [f"{a} vs {b}" for a, b in compare]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for label, task, key in TABLE_ROWS:
        values = {name: metric_values(columns[name], task, key) for name in names}
        if not any(values.values()):
            continue
        cells = [value_cell(values[n]) if values[n] else missing_cell(n, task, has_text) for n in names]
        cells += [margin_cell(values[n], values[floor]) for n in others]
        cells += [share_cell(values[n], values[floor], values[ceiling]) for n in closing]
        cells += [verdict_cell(values[a], values[b]) for a, b in compare]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def missing_cell(name: str, task: str, has_text: dict[str, bool] | None) -> str:
    no_text = has_text is not None and not has_text.get(name, True) and task in NO_TEXT_TASKS
    return "n/a, no text tower" if no_text else "n/a"


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


def plot_fewshot(columns: dict[str, dict[str, dict]], png: Path) -> bool:
    """Few-shot top-1 against shots per class, one line per model (mean +- std over seeds)."""
    curves = {name: results.get("fewshot", {}).get("details", {}).get("mean") for name, results in columns.items()}
    curves = {name: details for name, details in curves.items() if details}
    if not curves:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for name, details in curves.items():
        shots = sorted(details, key=int)
        for ax, classifier in zip(axes, ("prototype", "logistic")):
            means = [details[n][classifier]["mean"] for n in shots]
            stds = [details[n][classifier]["std"] for n in shots]
            ax.errorbar([int(n) for n in shots], means, yerr=stds, marker="o", capsize=3, label=name)
    for ax, classifier in zip(axes, ("prototype", "logistic")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled images per class")
        ax.set_title(f"few-shot, {classifier} (patch mean)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def plot_retrieval(columns: dict[str, dict[str, dict]], png: Path) -> bool:
    """Recall@1/5/10 in both directions, grouped bars per model."""
    models = [n for n, r in columns.items() if "retrieval" in r]
    if not models:
        return False
    import numpy as np

    plt = pyplot()
    keys = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / len(models)
    for i, name in enumerate(models):
        metrics = columns[name]["retrieval"]["metrics"]
        ax.bar(np.arange(len(keys)) + i * width, [metrics[k] for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([k.replace("image_to_text", "i->t").replace("text_to_image", "t->i") for k in keys])
    ax.set_ylabel("recall (%)")
    ax.set_title("retrieval on held-out captioned scenes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


SEED_DIR = re.compile(r"seed[-_]?(\d+)")


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


def write_report(
    run_dirs: list[Path], out_dir: Path, floor: str | None = None, ceiling: str | None = None,
    compare: Sequence[tuple[str, str]] = (), seeds: bool = False,
) -> Path:
    """Compile the result JSONs of several runs into ``out_dir/report.md`` and PNG figures.

    ``seeds=True`` makes the runs that report one model name seeds of one column: its cells read
    "mean ± half-width (n=K)" (95% Student-t interval), and a run's seed is the seed-K directory
    in its path, else the train seed its results record (see ``group_runs``). Without it each
    run is its own column.
    ``floor`` and ``ceiling`` are model names: margin columns over the floor (points) and each
    model's share of the floor-to-ceiling gap (percent); a name with no column is warned about.
    ``compare`` pairs model names (A, B) for columns of A - B over paired seeds and its verdict,
    ``langmim.stats.paired_verdict``'s. The seeded benchmark's call::

        write_report(dirs, out, floor="random-init", ceiling="supervised", compare=[("rils", "clip")], seeds=True)
    """
    if ceiling is not None and floor is None:
        raise LangmimError(f"a ceiling ('{ceiling}') needs a floor to measure the gap from (--floor MODEL)")
    columns, labels, warnings = labelled_columns(group_runs(read_runs(run_dirs), seeds))
    for what, name in (("floor", floor), ("ceiling", ceiling)):
        if name is not None and find_column(name, labels) is None:
            warnings.append(f"no column '{name}' for the {what}; the columns are {', '.join(columns)}")
    pairs = [(find_column(a, labels), find_column(b, labels)) for a, b in compare]
    for (a, b), found in zip(compare, pairs):
        if None in found:
            raise LangmimError(f"--compare {a}:{b}: no column '{a if found[0] is None else b}'; the columns are {', '.join(columns)}")
    for warning in warnings:
        print(f"report: warning: {warning}")
    has_text = {label: column_has_text(runs) for label, runs in columns.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(columns, has_text, find_column(floor, labels), find_column(ceiling, labels), pairs)
    lines = ["# langmim report", "", "Runs: " + ", ".join(f"`{d}`" for d in run_dirs), "", table, ""]
    lines += [f"**Warning**: {w}." for w in warnings]
    if any(len(runs) > 1 for runs in columns.values()):
        lines += ["Over several seeds a cell reads mean ± half-width of the 95% Student-t interval (n seeds); verdicts pair "
                  "seeds by index (a column of one run is paired with every seed), and the figures draw each column's lowest seed.", ""]
    firsts = {label: runs[min(runs)] for label, runs in columns.items()}
    if plot_fewshot(firsts, out_dir / "fewshot.png"):
        lines += ["## Few-shot", "![few-shot](fewshot.png)", ""]
    if plot_retrieval(firsts, out_dir / "retrieval.png"):
        lines += ["## Retrieval", "![retrieval](retrieval.png)", ""]
    lines += segmentation_examples(run_dirs, out_dir)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def column_has_text(runs: Seeds) -> bool:
    """Whether a column's model has a text tower; result files older than "has_text" are judged
    by the tasks they have."""
    results = runs[min(runs)]
    first = next(iter(results.values()))
    return first["has_text"] if "has_text" in first else any(t in results for t in NO_TEXT_TASKS)


def segmentation_examples(run_dirs: list[Path], out_dir: Path) -> list[str]:
    """Copy the runs' segmentation example PNGs next to the report; its markdown lines."""
    examples = [p for d in run_dirs for p in sorted(results_dir_of(d).glob("*_segmentation_examples.png"))]
    if not examples:
        return []
    lines = ["## Segmentation examples (image, truth, prediction)"]
    for png in examples:
        target = out_dir / f"{png.parent.parent.name}_{png.name}" if png.parent.name == "results" else out_dir / png.name
        if target.resolve() != png.resolve():
            target.write_bytes(png.read_bytes())
        lines += [f"![{png.stem}]({target.name})"]
    return lines
