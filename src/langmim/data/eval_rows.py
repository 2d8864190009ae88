"""Which rows of a data set an evaluation takes, shared by the evaluation suite and the writer of
the built-in sets' CLIP_benchmark copy (``langmim data clip-benchmark``), so both pick the same images."""
from __future__ import annotations

import numpy as np


def seeded_subset(pool: int, size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of ``size`` of ``pool`` rows (all of them if size >= pool), sorted."""
    return np.sort(np.random.default_rng([seed, pool]).permutation(pool)[:size])
