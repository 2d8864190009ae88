"""The evaluation suite: one registry of tasks with one signature, one CLIP_benchmark-style JSON
per (model, task, data set).

Built-in data, every evaluation image made of test-split items only (probes and heads fit on
train-split items):
- zeroshot, knn, linear, fewshot, finetune, finetune_lowshot: Fashion-MNIST test images rendered as centred scenes;
- retrieval: held-out captioned scenes;
- presence, cells, binding, counting: scene probes (`scene_probes`);
- compositional: each held-out scene against captions that change one thing (`compositional`);
- detection, segmentation: heads on the scenes' refined patch-token grid (`scene_features`);
- finetune_detection, finetune_segmentation: the encoder fine-tuned with a light head on a
  pyramid level of its tokens (`finetune_dense`);
- shift: zero-shot and the clean linear probe on shifted renders of the test set (`shift`).
A task is a function of an `EvalContext` (``context``), which holds the model, the config and
the features computed so far (in memory, and on disk per checkpoint: ``feature_cache``), so
tasks that share data share features. Each task's adapter sits beside its protocol and
registers itself (``registry``) with the name of its headline metric; this module imports them
all and runs them. Tasks that need a text tower are skipped with a note for MAE and MILAN.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..config import EvalConfig, to_dict
from ..files import write_atomic
from ..interface import LoadedModel
from . import (  # noqa: F401  (each registers its tasks)
    compositional,
    concepts,
    detection,
    fewshot,
    finetune,
    finetune_dense,
    knn,
    linear,
    retrieval,
    scene_probes,
    segmentation,
    shift,
    zeroshot,
)
from .clip_benchmark import write_clip_benchmark
from .context import EvalContext
from .registry import TASK_NAMES, TASKS, Task, headline_value, task

__all__ = ["TASKS", "TASK_NAMES", "EvalContext", "Task", "evaluate", "headline_value", "task"]

# In the order of ``TASK_NAMES``, not of registration, which hangs on import order.
for _name in TASK_NAMES:
    TASKS[_name] = TASKS.pop(_name)


def evaluate(
    model: LoadedModel, tasks: list[str], cfg: EvalConfig, out_dir: Path | None,
    model_name: str, data_root: str | None = None, log: Callable[[str], None] = print, dataset: str | None = None,
    dataset_root: str | None = None,
) -> dict[str, dict]:
    """Run ``tasks``; write one JSON per task to ``out_dir``. ``dataset`` (an image folder with
    train/ and val/, a CSV/TSV of image paths and captions, or ``wds/NAME``: the CLIP_benchmark
    set in ``dataset_root``) replaces the built-in data of the tasks that can use it; the others
    keep theirs. Each result names its headline metric ("headline": a key of its "metrics")."""
    ctx = EvalContext(model, cfg, out_dir, data_root, dataset, dataset_root, log, model_name)
    results = {}
    for name in tasks:
        spec = TASKS[name]
        if spec.needs_text and not model.has_text:
            log(f"{name} skipped: '{model.source}' has no text tower")
            continue
        start = time.perf_counter()
        result = spec.run(ctx)
        result.setdefault("dataset", spec.dataset or ctx.classification.name)
        result.update({
            "model": model_name,
            "task": name,
            "headline": spec.headline,
            "checkpoint": model.checkpoint_path,
            "step": model.step,
            "has_text": model.has_text,
            "config": to_dict(model.config) if model.config is not None else {"method": model.source},
            "seeds": {"eval": cfg.seed, "train": model.config.train.seed if model.config is not None else None},
            "seconds": time.perf_counter() - start,
        })
        results[name] = result
        log(f"{name}: {spec.headline} {result['metrics'][spec.headline]:.2f} ({result['seconds']:.1f}s)")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / f"{model_name}_{name}_{result['dataset'].replace('/', '-')}.json", json.dumps(result, indent=1))
            write_clip_benchmark(result, out_dir)
    return results
