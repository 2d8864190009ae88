"""Human-readable reports: markdown tables and PNG figures from a run's metrics and result
files. It reads files only (no model runs here), so ``langmim report`` starts without torch;
matplotlib is imported when a figure is drawn.

By what it does: ``runs`` reads result files into columns, ``table`` writes the comparison
table, ``figures`` draws the PNGs; ``write_report`` puts them together.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import LangmimError
from .figures import plot_fewshot, plot_loss_curves, plot_retrieval, pyplot, segmentation_examples
from .runs import Seeds, find_column, group_runs, labelled_columns, read_results, read_runs
from .table import NO_TEXT_TASKS, TABLE_ROWS, column_has_text, comparison_table, differing_setups, setup_warning

__all__ = ["NO_TEXT_TASKS", "TABLE_ROWS", "Seeds", "comparison_table", "plot_loss_curves", "pyplot", "read_results",
           "write_report"]


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
    ``langmim.stats.paired_verdict``'s. The rows of a task whose columns were measured on
    different data or split sizes are marked † and footnoted with each column's (a warning too).
    The seeded benchmark's call::

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
    differing = differing_setups(columns)
    warnings += [setup_warning(task, setups) for task, setups in differing.items()]
    for warning in warnings:
        print(f"report: warning: {warning}")
    has_text = {label: column_has_text(runs) for label, runs in columns.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(columns, has_text, find_column(floor, labels), find_column(ceiling, labels), pairs, differing)
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
