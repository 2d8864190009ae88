"""The registry of evaluation tasks: each has one signature, ``run(ctx) -> result``, and names
its headline metric, the one number a log line, model card or demo quotes for it.

The task adapters register themselves beside their protocols (``zeroshot.py``, ``linear.py``,
...); ``eval.suite`` imports them all, so ``TASKS`` is complete there. This module imports no
torch: ``langmim report`` and model cards read headlines from result files through it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import EvalContext

LEGACY_HEADLINE = "top1"  # result files written before tasks named their headline kept it under this key
# Every task's name, in the order ``--tasks all`` runs them (classification first, then the scene
# tasks); the command line checks ``--tasks`` against it before the task modules (and torch) load.
TASK_NAMES = ("zeroshot", "concepts", "knn", "linear", "fewshot", "finetune", "finetune_lowshot", "retrieval", "presence", "cells",
              "binding", "counting", "compositional", "detection", "segmentation", "finetune_detection", "finetune_segmentation", "shift")


@dataclass(frozen=True)
class Task:
    """A registered evaluation: ``run(ctx)`` returns {"metrics": {..., headline}, "details", "split_sizes"}."""

    name: str
    run: Callable[[EvalContext], dict]
    headline: str  # the metric key of the task's headline figure: "top1", "ap50", "miou", ...
    dataset: str | None  # the built-in data set's name; None: the classification data's
    needs_text: bool = False


TASKS: dict[str, Task] = {}


def task(name: str, headline: str, dataset: str | None = None, needs_text: bool = False) -> Callable:
    """Register ``run`` as the evaluation task ``name``, whose metrics hold ``headline``."""
    def register(run: Callable[[EvalContext], dict]) -> Callable[[EvalContext], dict]:
        TASKS[name] = Task(name, run, headline, dataset, needs_text)
        return run
    return register


def headline_value(result: dict[str, Any]) -> float | None:
    """A result's headline figure: the metric its "headline" names, or "top1" in older files."""
    return result.get("metrics", {}).get(result.get("headline", LEGACY_HEADLINE))
