"""Fashion-scenes' block resize against PIL: equal to the bit on every item, and its cost per item.

    python benchmarks/resize_blocks.py

For each item side the scenes use at 32, 64 and 224 px, every Fashion-MNIST item of both splits
is resized by PIL (Image.resize, BILINEAR) and by `_resize_items` in the blocks a run uses; the
mismatched pixels are counted and both are timed per item (best of 3 passes over 2,000 items).
One JSON line per side goes to benchmarks/results/resize_blocks.jsonl.
"""
from __future__ import annotations

import json
import time
from datetime import date

import numpy as np
import torch
from PIL import Image

from langmim.data.fashion_mnist import load_fashion_mnist
from langmim.data.scenes import block_items, resize_items
from results_log import append_result

SIDES = (11, 16, 22, 32, 76, 112)  # small and large items at 32, 64 and 224 px


def pil_resize(items: np.ndarray, side: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR)) for item in items])


def block_resize(items: np.ndarray, side: int) -> np.ndarray:
    size = block_items(side)
    return np.concatenate([resize_items(items[i:i + size], side) for i in range(0, len(items), size)])


def seconds_per_item(resize, items: np.ndarray, side: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        resize(items, side)
        best = min(best, time.perf_counter() - start)
    return best / len(items)


def main() -> None:
    items = np.concatenate([load_fashion_mnist(split)[0] for split in ("train", "test")])
    for side in SIDES:
        mismatched = int((pil_resize(items, side) != block_resize(items, side)).sum())
        pil_us = 1e6 * seconds_per_item(pil_resize, items[:2000], side)
        block_us = 1e6 * seconds_per_item(block_resize, items[:2000], side)
        record = {"date": date.today().isoformat(), "torch": torch.__version__, "side": side,
                  "items": len(items), "block_items": block_items(side), "mismatched_pixels": mismatched,
                  "pil_us_per_item": round(pil_us, 1), "block_us_per_item": round(block_us, 1),
                  "speedup": round(pil_us / block_us, 1)}
        append_result("resize_blocks", record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
