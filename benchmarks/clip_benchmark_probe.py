"""Why CLIP_benchmark's linear probe and langmim's differ on the same files: each trainer on each
kind of feature.

    python benchmarks/clip_benchmark_probe.py CHECKPOINT SET_DIR FEATURE_DIR

SET_DIR is the fashion-mnist set `langmim data clip-benchmark` wrote; FEATURE_DIR is the folder
CLIP_benchmark's linear probe cached its features in (`--feature_root` / the model's folder, with
features_{train,test}.pt) after evaluating CHECKPOINT's open_clip export on SET_DIR. Its trainer
(AdamW, lr 0.1, cosine, 10 epochs of 64, no weight decay: what it runs without a validation
split) and langmim's (`fit_linear_probe`) are each fit on its image embeddings, on langmim's
patch-token mean, and on that mean L2-normalised as CLIP_benchmark normalises; top-1 on the test
split, one JSON line appended to benchmarks/results/clip_benchmark_probe.jsonl.
"""
from __future__ import annotations

import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from langmim.api import load
from langmim.data.benchmark_sets import open_benchmark_set
from langmim.eval.clip_benchmark_cli import mended_clip_benchmark
from langmim.eval.features import extract_features
from langmim.eval.linear import accuracy, fit_linear_probe
from results_log import append_result

CLIP_BENCHMARK_PROBE = {"batch_size": 64, "lr": 0.1, "epochs": 10, "weight_decay": 0.0, "seed": 0}


def clip_benchmark_trainer(train_x, train_y, test_x, test_y) -> float:
    """CLIP_benchmark's own ``train`` and ``infer`` on these features (its batch order aside)."""
    from clip_benchmark import cli

    p = CLIP_BENCHMARK_PROBE
    with mended_clip_benchmark():
        probe = cli.linear_probe
        loader = DataLoader(probe.FeatureDataset(train_x, train_y), batch_size=p["batch_size"], shuffle=True)
        head = probe.train(loader, train_x.shape[1], int(train_y.max()) + 1, p["weight_decay"], p["lr"], p["epochs"], False, "cpu", p["seed"])
        logits, target = probe.infer(head, DataLoader(probe.FeatureDataset(test_x, test_y), batch_size=p["batch_size"]), False, "cpu")
    return round(100.0 * (logits.argmax(1) == target).float().mean().item(), 2)


def langmim_trainer(train_x, train_y, test_x, test_y) -> float:
    probe = fit_linear_probe(train_x, train_y, seed=0, num_outputs=int(train_y.max()) + 1)
    return round(accuracy(probe(test_x), test_y), 2)


def main() -> None:
    checkpoint, set_dir, feature_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    model = load(checkpoint)
    written = open_benchmark_set("wds/fashion-mnist", set_dir, model.image_size)
    ours = {split: extract_features(model, getattr(written, split)) for split in ("train", "test")}
    theirs = {split: torch.load(feature_dir / f"features_{split}.pt") for split in ("train", "test")}
    gap = max((theirs[s] - ours[s]["embed"]).abs().max().item() for s in theirs)
    if gap > 1e-5:
        sys.exit(f"CLIP_benchmark's features are not langmim's image embeddings of {set_dir} (max gap {gap:.2e})")
    features = {
        "image embedding, L2-normalised (CLIP_benchmark's)": {s: theirs[s] for s in theirs},
        "patch-token mean, L2-normalised": {s: F.normalize(ours[s]["mean"], dim=-1) for s in ours},
        "patch-token mean (langmim's)": {s: ours[s]["mean"] for s in ours},
    }
    labels = {s: ours[s]["labels"] for s in ours}
    record = {"date": date.today().isoformat(), "checkpoint": str(model.checkpoint_path), "train_rows": len(labels["train"]),
              "test_rows": len(labels["test"]), "embedding_gap": gap, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "clip_benchmark_probe": CLIP_BENCHMARK_PROBE, "top1": {}}
    for name, x in features.items():
        record["top1"][name] = {trainer.__name__: trainer(x["train"], labels["train"], x["test"], labels["test"])
                                for trainer in (clip_benchmark_trainer, langmim_trainer)}
    append_result("clip_benchmark_probe", record)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
