"""The report's comparison table: one row per metric, one column per model, with margins over a
floor, shares of the floor-to-ceiling gap and paired verdicts."""
from __future__ import annotations

from collections.abc import Collection, Sequence

from ..stats import Interval, mean_interval, paired_verdict
from .runs import Seeds

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
    ("fine-tuned scene presence mAP, 1% of the labels (%)", "finetune_lowshot", "map_1pct"),
    ("fine-tuned scene presence mAP, 10% of the labels (%)", "finetune_lowshot", "map_10pct"),
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
    ("fine-tuned detection AP50 (%)", "finetune_detection", "ap50"),
    ("fine-tuned segmentation mIoU (%)", "finetune_segmentation", "miou"),
    ("shifted renders: linear probe, mean of styles (%)", "shift", "linear_shifted_mean"),
    ("shifted renders: zero-shot, mean of styles (%)", "shift", "zeroshot_shifted_mean"),
)
NO_TEXT_TASKS = ("zeroshot", "retrieval", "compositional")
MARKER = "†"  # on the rows of a task whose columns were measured on different data or split sizes
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


def task_setup(result: dict) -> str | None:
    """What a result was measured on, e.g. "fashion-mnist, test 2000, train 2000"; None where
    its file records no split sizes (CLIP_benchmark's)."""
    sizes = result.get("split_sizes")
    if not sizes:
        return None
    return ", ".join([str(result.get("dataset", "unnamed data")), *(f"{k} {v}" for k, v in sorted(sizes.items()))])


def differing_setups(columns: dict[str, Seeds]) -> dict[str, dict[str, list[str]]]:
    """{task: {column: its setups}} for each task whose results were measured on different data or
    split sizes, between columns or between one column's seeds."""
    found: dict[str, dict[str, set[str]]] = {}
    for name, runs in columns.items():
        for results in runs.values():
            for task, result in results.items():
                if (setup := task_setup(result)) is not None:
                    found.setdefault(task, {}).setdefault(name, set()).add(setup)
    return {task: {name: sorted(setups) for name, setups in by_column.items()}
            for task, by_column in found.items() if len(set().union(*by_column.values())) > 1}


def setup_warning(task: str, setups: dict[str, list[str]]) -> str:
    """The footnote of a task's marked rows, naming each column's setup."""
    listed = "; ".join(f"{name}: {' and '.join(s)}" for name, s in setups.items())
    return (f"{MARKER} {task}: the columns were measured on different data or split sizes ({listed}), so its rows do not "
            "compare like with like; evaluate every run with the same eval.* sizes")


def comparison_table(
    columns: dict[str, Seeds], has_text: dict[str, bool] | None = None, floor: str | None = None,
    ceiling: str | None = None, compare: Sequence[tuple[str, str]] = (), marked: Collection[str] = (),
) -> str:
    """Markdown table: one row per metric that any model has, one column per model (its seeds'
    results keyed by task; several seeds read "mean ± half-width (n=K)", the 95% t interval).
    A text task of a model without a text tower reads "n/a, no text tower". With ``floor`` (a
    column's name, e.g. the random-init model), each other model also gets a column of its
    margin over the floor, in points; with ``ceiling`` too (e.g. the supervised model), one of
    its share of the floor-to-ceiling gap. ``compare`` (pairs of column names) adds a column of
    A - B over paired seeds and its verdict (see ``paired_values``). The rows of the ``marked``
    tasks carry ``MARKER`` (see ``differing_setups``)."""
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
        lines.append(f"| {label}{f' {MARKER}' if task in marked else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def missing_cell(name: str, task: str, has_text: dict[str, bool] | None) -> str:
    no_text = has_text is not None and not has_text.get(name, True) and task in NO_TEXT_TASKS
    return "n/a, no text tower" if no_text else "n/a"


def column_has_text(runs: Seeds) -> bool:
    """Whether a column's model has a text tower; result files older than "has_text" are judged
    by the tasks they have."""
    results = runs[min(runs)]
    first = next(iter(results.values()))
    return first["has_text"] if "has_text" in first else any(t in results for t in NO_TEXT_TASKS)
