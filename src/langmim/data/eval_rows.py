"""Which rows of the built-in data an evaluation takes, shared by the evaluation suite and the
writer of its CLIP_benchmark copy (``langmim data clip-benchmark``), so both pick the same images."""
from __future__ import annotations

import numpy as np

EVAL_SCENE_SEED = 1  # held-out scenes are drawn from test-split items with their own seed


def seeded_subset(pool: int, size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of ``size`` of ``pool`` rows (all of them if size >= pool), sorted."""
    return np.sort(np.random.default_rng([seed, pool]).permutation(pool)[:size])
