"""The quality protocol's tables and figures, written from the kept results alone: per point a
report and a headline table (mean +- 95% interval over seeds, the room above the floor, paired
verdicts), the sweep figures, and the first look (both worlds side by side)."""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quality_grid import CEILING, FLOOR, RUNS, TEXT_TASKS, WORLDS, Point, kept_metrics, kept_root, kept_seed_dirs, seed_values
from results_log import RESULTS_DIR

KEPT_DIR = kept_root(RESULTS_DIR, "clean")


# (title, task, metric key) of the headline metrics: the sweep figures draw one panel each
HEADLINE = (
    ("zero-shot top-1 (%)", "zeroshot", "top1"),
    ("concept zero-shot, head concepts (%)", "concepts", "head_top1"),
    ("concept zero-shot, tail concepts (%)", "concepts", "tail_top1"),
    ("linear probe top-1, patch mean (%)", "linear", "mean_top1"),
    ("few-shot 16-shot, logistic (%)", "fewshot", "mean_logistic_16shot"),
    ("scene presence mAP (%)", "presence", "mean_map"),
    ("garment per occupied cell (%)", "cells", "occupied_accuracy"),
    ("colour of a named garment (%)", "binding", "mean_top1"),
    ("compositional zero-shot (%)", "compositional", "mean_acc"),
    ("detection AP50 (%)", "detection", "ap50"),
    ("segmentation mIoU (%)", "segmentation", "miou"),
    ("shifted renders, linear probe (%)", "shift", "linear_shifted_mean"),
)
# the tables' rows: the headline metrics, retrieval, and the fine-tuning tasks where a point's runs have them
TABLE_METRICS = HEADLINE + (
    ("retrieval, image to text R@1 (%)", "retrieval", "image_to_text_R@1"),
    ("fine-tuned presence mAP, 1% of labels (%)", "finetune_lowshot", "map_1pct"),
    ("fine-tuned presence mAP, 10% of labels (%)", "finetune_lowshot", "map_10pct"),
    ("fine-tuned segmentation mIoU (%)", "finetune_segmentation", "miou"),
    ("fine-tuned detection AP50 (%)", "finetune_detection", "ap50"),
)


def plot_sweep(points: list[Point], x_of: Callable[[Point], int], x_label: str, figure_title: str, png: Path, kept: Path = KEPT_DIR) -> Path | None:
    """One panel per headline metric against ``x_of(point)`` (axis ``x_label``, figure ``figure_title``):
    a line per method with its 95% interval band over seeds, the random-init floor as a grey band."""
    from langmim.report import pyplot
    from langmim.stats import mean_interval

    points = [p for p in points if (kept / p.name).is_dir()]
    if len(points) < 2:
        return None
    plt = pyplot()
    floor = kept_metrics(kept / FLOOR)
    columns = (len(HEADLINE) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(4 * columns, 7), squeeze=False)
    xs = [x_of(p) for p in points]
    for ax, (title, task, key) in zip(axes.flat, HEADLINE):
        for method in (m for m in RUNS if m != FLOOR):
            line = []
            for point, x in zip(points, xs):
                values = seed_values(kept_metrics(kept / point.name / method), task, key)
                if values:
                    interval = mean_interval(values)
                    line.append((x, interval.mean, interval.half_width if interval.n > 1 else 0.0))
            if line:
                x, mean, half = map(list, zip(*line))
                style = "--" if method == CEILING else "-"
                drawn = ax.plot(x, mean, style, marker="o", label=method)[0]
                ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], color=drawn.get_color(), alpha=0.2)
        values = seed_values(floor, task, key)
        if values:
            interval = mean_interval(values)
            ax.axhline(interval.mean, color="grey", linestyle=":", label=FLOOR)
            if interval.n > 1:
                ax.axhspan(interval.low, interval.high, color="grey", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs], fontsize=7)
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(HEADLINE):]:
        ax.axis("off")
    handles = {label: line for ax in axes.flat for line, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(figure_title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


COMPARE = (("rils", "clip"), ("milan", "mae"), ("slip", "clip"), ("siglip", "clip"), ("flip", "clip"), ("mae", FLOOR),
           ("milan", FLOOR), ("clip", FLOOR), ("rils", FLOOR))
CLAIMS = (("rils", "clip"), ("milan", "mae"), ("slip", "clip"), ("mae", FLOOR), ("milan", FLOOR))  # the pairs the headline table tests
HEADLINE_GAP = 25.0  # points the ceiling must clear the floor by for a task to headline


def interval_text(values: list[float], signed: bool = False) -> str:
    """"mean ± 95% half-width" over seeds, one decimal; a single seed reads "mean (n=1)"."""
    from langmim.stats import mean_interval

    interval = mean_interval(values)
    mean = f"{interval.mean:+.1f}" if signed else f"{interval.mean:.1f}"
    return f"{mean} (n=1)" if interval.n == 1 else f"{mean} ± {interval.half_width:.1f}"


def paired_difference(a: dict[int, dict], b: dict[int, dict], task: str, key: str) -> tuple[str, str] | None:
    """A - B over the seeds both have: ("mean ± half-width", verdict of the paired t-test at 95%);
    None where no seed has both."""
    from langmim.stats import paired_verdict

    seeds = [s for s in sorted(a.keys() & b.keys()) if key in a[s].get(task, {}) and key in b[s].get(task, {})]
    if not seeds:
        return None
    verdict = paired_verdict([a[s][task][key] for s in seeds], [b[s][task][key] for s in seeds])
    return interval_text([a[s][task][key] - b[s][task][key] for s in seeds], signed=True), verdict.verdict


def claim_text(a: dict[int, dict], b: dict[int, dict], task: str, key: str) -> str:
    """A - B as "mean ± half-width verdict", or "–" where no seed has both."""
    difference = paired_difference(a, b, task, key)
    return "–" if difference is None else " ".join(difference)


def known_room(runs: dict[str, dict[int, dict]], task: str, key: str) -> tuple[str, float | None]:
    """How far above the floor a task is known to reach, in points: the ceiling's paired gap; for
    the text tasks, which the ceiling (no text tower) cannot take, the best method's gap instead."""
    if task not in TEXT_TASKS:
        gap = claim_text(runs[CEILING], runs[FLOOR], task, key)
        return gap, None if gap == "–" else float(gap.split()[0])
    best = max((m for m in runs if m not in (FLOOR, CEILING) and seed_values(runs[m], task, key)),
               key=lambda m: statistics.mean(seed_values(runs[m], task, key)), default=None)
    gap = "–" if best is None else claim_text(runs[best], runs[FLOOR], task, key)
    if gap == "–":
        return gap, None
    return f"{gap} ({best}; no ceiling)", float(gap.split()[0])


def headline_table(point: Point, kept: Path = KEPT_DIR, claims: tuple[tuple[str, str], ...] = CLAIMS,
                   methods: tuple[str, ...] = tuple(RUNS)) -> str:
    """Markdown: a row per headline metric at ``point`` (of the runs kept under ``kept``), each run's
    mean ± 95% interval over seeds, the known room above the floor (``known_room``) and the paired
    ``claims`` with their verdicts. A task headlines only where that room is at least HEADLINE_GAP
    points; the others follow in a second table with their measured room."""
    runs = {m: kept_metrics(kept / point.name / m) if m in methods else {} for m in RUNS if m != FLOOR}
    runs[FLOOR] = kept_metrics(kept / FLOOR)
    columns = [FLOOR, CEILING, *(m for m in RUNS if m not in (FLOOR, CEILING) and runs[m])]  # methods run at this point
    claims = [(a, b) for a, b in claims if runs[a] and runs[b]]
    header = ["metric", *columns, "room above the floor", *(f"{a} − {b}" for a, b in claims)]
    rows: dict[bool, list[str]] = {True: [], False: []}
    for title, task, key in TABLE_METRICS:
        cells = [interval_text(values) if (values := seed_values(runs[m], task, key)) else "–" for m in columns]
        if all(cell == "–" for cell in cells):  # a task this point's runs were not evaluated on
            continue
        room, points = known_room(runs, task, key)
        cells += [room, *(claim_text(runs[a], runs[b], task, key) for a, b in claims)]
        rows[points is not None and points >= HEADLINE_GAP].append(f"| {title} | " + " | ".join(cells) + " |")
    table = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    out = [f"Headline tasks (room above the floor of at least {HEADLINE_GAP:.0f} points):", "", *table, *rows[True]]
    if rows[False]:
        out += ["", f"Out of the headline (room under {HEADLINE_GAP:.0f} points: the task cannot show what an encoder "
                "knows at this point):", "", *table, *rows[False]]
    return "\n".join(out)


BENCHMARKS_README = Path(__file__).with_name("README.md")


def point_title(point: Point, batch_size: int) -> str:
    seen = f"{point.steps:,} steps of {batch_size} ({point.steps * batch_size:,} images seen)"
    return f"{seen}, " + (f"a fixed set of {point.num_scenes:,} scenes" if point.num_scenes else "a fresh scene per sample")


def replace_block(path: Path, name: str, text: str) -> Path:
    """Put ``text`` between the ``<!-- name -->`` and ``<!-- /name -->`` lines of ``path``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    before, found, rest = path.read_text().partition(start)
    if not found or end not in rest:
        raise SystemExit(f"{path}: no {start} ... {end} block to write the tables into")
    path.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
    return path


def summarize(points: list[Point], data_steps: int, world: str = "clean", batch_size: int = 128) -> list[Path]:
    """Per point of one world, report.md (mean +- 95% interval over seeds, margins over the floor,
    shares of the floor-to-ceiling gap, paired verdicts) and its headline table (headline.md); the
    sweep figures where a sweep has two points or more; on the web world, the regime map and the
    published-claims table at ``data_steps`` (both also in benchmarks/README.md)."""
    from langmim.report import write_report

    kept = kept_root(RESULTS_DIR, world)
    written = []
    floor_dirs = kept_seed_dirs(kept / FLOOR)
    for point in points:
        run_dirs = kept_seed_dirs(kept / point.name, "*/seed-*")
        if not run_dirs:
            continue
        present = {d.parent.name for d in run_dirs} | ({FLOOR} if floor_dirs else set())
        compare = [(a, b) for a, b in COMPARE if {a, b} <= present]
        written.append(write_report(run_dirs + floor_dirs, kept / point.name, floor=FLOOR if floor_dirs else None,
                                    ceiling=CEILING if CEILING in present and floor_dirs else None, compare=compare, seeds=True))
    protocol = [p for p in points if p.regime is None and (kept / p.name).is_dir()]
    tables = [f"#### {point_title(p, batch_size)}\n\n{headline_table(p, kept)}\n" for p in protocol]
    if tables:
        (kept / "headline.md").write_text("# Headline metrics per point: mean ± 95% interval over seeds; "
                                          "differences paired by seed with their verdicts\n\n" + "\n".join(tables))
        written.append(kept / "headline.md")
    budget = sorted({p for p in protocol if p.num_scenes is None}, key=lambda p: p.steps)
    data = sorted({p for p in protocol if p.steps == data_steps}, key=lambda p: p.num_scenes or p.steps * batch_size)
    written += [png for png in (
        plot_sweep(budget, lambda p: p.steps * batch_size, "images seen", "The budget sweep: a fresh scene per sample; "
                   "mean and 95% interval over seeds", kept / "sweep_budget.png", kept),
        plot_sweep(data, lambda p: p.num_scenes or p.steps * batch_size, "distinct scenes",
                   f"The data-limited sweep: {data_steps * batch_size:,} images seen; rightmost, a fresh scene per sample; "
                   "mean and 95% interval over seeds", kept / "sweep_data.png", kept),
    ) if png is not None]
    if world == "web":
        written += regime_map(kept, data_steps)
        claims = [p for p in protocol if p.steps == data_steps]
        written.append(replace_block(BENCHMARKS_README, "published-claims", claims_table(kept, claims)))
    return written


# the regime map: the web world's caption regimes at one budget, from today's exhaustive, true captions to YFCC15M's noise
REGIME_CELLS = (("exhaustive", "exhaustive, 0%"), ("mismatch-0", "web, 0%"), (None, "web, 16.8% (CC3M)"), ("mismatch-36", "web, 36.5% (YFCC15M)"))
REGIME_METHODS, REGIME_BASELINE = ("slip", "rils", "siglip"), "clip"
REGIME_METRICS = (
    ("zero-shot top-1", "zeroshot", "top1"),
    ("concept zero-shot, tail", "concepts", "tail_top1"),
    ("retrieval R@1", "retrieval", "image_to_text_R@1"),
    ("compositional", "compositional", "mean_acc"),
    ("linear probe", "linear", "mean_top1"),
)
VERDICT_COLOURS = {"ahead": "#9be39b", "behind": "#f2a0a0", "level": "#e6e6e6", "cannot tell": "#ffffff"}


def regime_runs(kept: Path, steps: int) -> list[tuple[str, dict[str, dict[int, dict]]]]:
    """(cell label, {method: {seed: {task: metrics}}}) of each regime with kept runs, in REGIME_CELLS order."""
    cells = []
    for regime, label in REGIME_CELLS:
        folder = kept / Point(steps, regime=regime).name
        runs = {m: kept_metrics(folder / m) for m in (REGIME_BASELINE, *REGIME_METHODS)}
        if any(runs.values()):
            cells.append((label, runs))
    return cells


def regime_map(kept: Path, steps: int) -> list[Path]:
    """The regime map's table (regime_map.md and the README's regime-map block) and figure: per
    metric, CLIP's mean and each method's paired difference from it in every cell, with its verdict."""
    cells = regime_runs(kept, steps)
    if not cells:
        return []
    header = "| metric | run | " + " | ".join(label for label, _ in cells) + " |\n|---|---|" + "---|" * len(cells)
    rows = []
    for title, task, key in REGIME_METRICS:
        rows.append(f"| {title} | {REGIME_BASELINE} | " + " | ".join(
            interval_text(v) if (v := seed_values(runs[REGIME_BASELINE], task, key)) else "–" for _, runs in cells) + " |")
        for method in REGIME_METHODS:
            rows.append(f"| | {method} − {REGIME_BASELINE} | " + " | ".join(
                claim_text(runs[method], runs[REGIME_BASELINE], task, key) for _, runs in cells) + " |")
    table = header + "\n" + "\n".join(rows)
    (kept / "regime_map.md").write_text(f"# The regime map at {steps} steps: mean ± 95% interval over seeds; differences "
                                        "paired by seed, with their verdicts\n\n{table}\n")
    return [kept / "regime_map.md", replace_block(BENCHMARKS_README, "regime-map", table), plot_regime_map(cells, kept / "regime_map.png")]


def plot_regime_map(cells: list[tuple[str, dict]], png: Path) -> Path:
    """One panel per metric: a row per method, a column per regime, each cell its paired difference
    from CLIP (mean ± 95% half-width) coloured by the verdict."""
    from langmim.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(REGIME_METRICS), figsize=(3.4 * len(REGIME_METRICS), 0.6 * len(REGIME_METHODS) + 2.4), squeeze=False)
    for ax, (title, task, key) in zip(axes.flat, REGIME_METRICS):
        for row, method in enumerate(REGIME_METHODS):
            for column, (_, runs) in enumerate(cells):
                text, verdict = paired_difference(runs[method], runs[REGIME_BASELINE], task, key) or ("–", "cannot tell")
                ax.add_patch(plt.Rectangle((column, row), 1, 1, facecolor=VERDICT_COLOURS[verdict], edgecolor="white"))
                ax.text(column + 0.5, row + 0.5, text.replace(" ± ", "\n± "), ha="center", va="center", fontsize=7)
        ax.set_xlim(0, len(cells))
        ax.set_ylim(len(REGIME_METHODS), 0)
        ax.set_xticks([c + 0.5 for c in range(len(cells))], [label.replace(", ", "\n").replace(" (", "\n(") for label, _ in cells], fontsize=7)
        ax.set_yticks([r + 0.5 for r in range(len(REGIME_METHODS))], [f"{m} − {REGIME_BASELINE}" for m in REGIME_METHODS], fontsize=8)
        ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c) for c in VERDICT_COLOURS.values()]
    fig.legend(handles, list(VERDICT_COLOURS), loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("The regime map: each method's paired difference from CLIP (points), per caption regime (coverage, mismatched share)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


@dataclass(frozen=True)
class Claim:
    """A published ordering: ``a`` against ``b`` is ``expected`` ("ahead", or "not ahead": level or
    behind) on ``metrics`` ((task, key) pairs), as ``published`` reports it."""

    text: str
    a: str
    b: str
    expected: str
    metrics: tuple[tuple[str, str], ...]
    published: str


LOW_SHOT = (("finetune_lowshot", "map_1pct"), ("finetune_lowshot", "map_10pct"), ("fewshot", "mean_logistic_16shot"), ("linear", "mean_top1"))
PUBLISHED_CLAIMS = (
    Claim("SLIP over CLIP when pairs are few", "slip", "clip", "ahead",
          (("zeroshot", "top1"), ("concepts", "tail_top1"), ("retrieval", "image_to_text_R@1")),
          "zero-shot +5.9 (CC3M), +4.2 (CC12M), +5.2 (YFCC15M); SLIP README"),
    Claim("RILS over CLIP, largest at low shot", "rils", "clip", "ahead", LOW_SHOT, "RILS paper, its abstract stressing low-shot transfer"),
    Claim("RILS over MAE, largest at low shot", "rils", "mae", "ahead", LOW_SHOT,
          "RILS paper: well ahead on linear probe, k-NN and few-shot; fine-tuned ImageNet 83.6 = MAE's"),
    Claim("MILAN over MAE, fine-tuned and probed", "milan", "mae", "ahead",
          (("linear", "mean_top1"), ("finetune_lowshot", "map_1pct"), ("finetune_segmentation", "miou"), ("finetune_detection", "ap50")),
          "ViT-B/16: linear probe 78.9 (mmpretrain) vs 68.0, fine-tuned 85.4 vs 83.6, ADE20K 52.7 vs 48.1"),
    Claim("FLIP at 50% without unmasked tuning, level with or behind CLIP at equal epochs", "flip", "clip", "not ahead",
          (("zeroshot", "top1"), ("retrieval", "image_to_text_R@1"), ("linear", "mean_top1")),
          "FLIP Tab. 1, A-CLIP, GLIP's CC12M table"),
)


def reproduces(claim: Claim, verdict: str) -> str:
    """Whether a paired verdict of A against B shows the claim: "yes"; for a claim that A is ahead,
    "not shown (level)" where the interval holds 0 and "no (reversed)" where B is ahead; for a claim
    that A is not ahead, "no" where it is; "cannot tell" under two seeds."""
    if verdict == "cannot tell":
        return "cannot tell"
    if claim.expected == "ahead":
        return {"ahead": "yes", "level": "not shown (level)", "behind": "no (reversed)"}[verdict]
    return "no" if verdict == "ahead" else "yes"


def claims_table(kept: Path, points: list[Point]) -> str:
    """Markdown: a row per (claim, metric), per point the paired difference A - B with its verdict
    and whether it reproduces the claim."""
    runs = {p: {m: kept_metrics(kept / p.name / m) for m in RUNS if m != FLOOR} for p in points}
    titles = {(task, key): title for title, task, key in TABLE_METRICS}
    header = ["claim (published)", "metric", *(f"{p.steps:,} steps, {f'{p.num_scenes:,}' if p.num_scenes else 'unlimited'} scenes" for p in points)]
    rows = []
    for claim in PUBLISHED_CLAIMS:
        for index, (task, key) in enumerate(claim.metrics):
            cells = []
            for point in points:
                difference = paired_difference(runs[point][claim.a], runs[point][claim.b], task, key)
                cells.append("–" if difference is None else
                             f"{claim.a} − {claim.b}: {' '.join(difference)}: **{reproduces(claim, difference[1])}**")
            name = f"{claim.text} ({claim.published})" if index == 0 else ""
            rows.append(f"| {name} | {titles.get((task, key), f'{task} {key}')} | " + " | ".join(cells) + " |")
    return "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *rows])


FIRST_LOOK = Point(800)  # the one budget both worlds are compared at
FIRST_LOOK_METHODS = ("clip", "slip", "rils", "mae", "milan", CEILING)
FIRST_LOOK_CLAIMS = (("slip", "clip"), ("rils", "clip"), ("milan", "clip"), ("mae", "clip"), ("milan", "mae"), ("rils", "mae"))


def cost_text(kept: Path, point: Point) -> str:
    """When, where and at what CPU cost the kept jobs of one world at ``point`` ran."""
    jobs = [json.loads((d / "job.json").read_text()) for d in
            [*kept_seed_dirs(kept / point.name, "*/seed-*"), *kept_seed_dirs(kept / FLOOR)]]
    jobs = [j for j in jobs if j["run"] in (*FIRST_LOOK_METHODS, FLOOR)]
    if not jobs:
        return "no jobs kept yet"
    hours = {k: sum(j[k] for j in jobs) / 3600 for k in ("train_seconds", "eval_seconds")}
    cpus = sorted({f"{j['cpu']} ({j['machine']})" for j in jobs})
    dates = sorted({j["date"] for j in jobs})
    return (f"{len(jobs)} jobs run {' to '.join(dict.fromkeys((dates[0], dates[-1])))} on {'; '.join(cpus)}, one torch thread "
            f"each: {hours['train_seconds']:.1f} hours of pre-training and {hours['eval_seconds']:.1f} of evaluation (wall-clock)")


def text_only_text(kept: Path, point: Point) -> str:
    """The compositional task's text-only control as one run of this world measured it (it reads
    the captions alone, so every run measures the same)."""
    for path in sorted((kept / point.name).glob("*/seed-*/results/*_compositional_*.json")):
        metrics = json.loads(path.read_text())["metrics"]
        if "text_only_mean_acc" in metrics:
            kinds = ", ".join(f"{k[len('text_only_'):-len('_acc')]} {v:.1f}" for k, v in metrics.items()
                              if k.startswith("text_only_") and k != "text_only_mean_acc")
            return f"{metrics['text_only_mean_acc']:.1f}% (per kind of negative: {kinds})"
    return "not in these runs' results (it reads the captions alone, the same for every run of both worlds)"


def first_look() -> Path | None:
    """The first-look block of benchmarks/README.md: the headline table of both worlds at
    FIRST_LOOK, verdicts against CLIP and MAE, and each world's cost."""
    worlds = [(name, kept_root(RESULTS_DIR, name)) for name in WORLDS]
    worlds = [(name, kept) for name, kept in worlds if (kept / FIRST_LOOK.name).is_dir()]
    if not worlds:
        return None
    blocks = []
    for name, kept in worlds:
        blocks.append(f"#### The {name} world: {point_title(FIRST_LOOK, 128)}\n\n"
                      f"{headline_table(FIRST_LOOK, kept, FIRST_LOOK_CLAIMS, FIRST_LOOK_METHODS)}\n\n"
                      f"Text-only control of the compositional task (no image seen): {text_only_text(kept, FIRST_LOOK)}. "
                      f"Cost: {cost_text(kept, FIRST_LOOK)}.\n")
    return replace_block(BENCHMARKS_README, "first-look", "\n".join(blocks))


