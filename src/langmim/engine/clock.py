"""A per-phase clock for the training step (forward / backward / optimizer), read by benchmarks."""
from __future__ import annotations

import time

import torch


class PhaseClock:
    """Seconds spent in each named phase of a step. An accelerator runs asynchronously, so its
    phases are exact only with ``synchronize`` (which costs throughput: benchmarks only)."""

    def __init__(self, device: torch.device, synchronize: bool) -> None:
        self.device, self.synchronize, self.seconds = device, synchronize, {}
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Add the time since the last lap to ``phase``."""
        if self.synchronize and self.device.type in ("cuda", "mps"):
            getattr(torch, self.device.type).synchronize()
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now
