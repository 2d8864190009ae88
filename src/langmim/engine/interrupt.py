"""Stop a run cleanly on SIGINT or SIGTERM: finish the step, write a checkpoint, then exit.

A cluster's SIGTERM (pre-emption, a time limit) or a Ctrl-C then costs no training: the run
resumes from that very step with ``--resume latest``. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import sys
import threading

import torch

from .. import dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedBySignal(KeyboardInterrupt):
    """The run stopped on a signal after writing a checkpoint."""


class StopSignals:
    """Within ``with``: remember a SIGINT or SIGTERM instead of dying mid-step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now; the last checkpoint stays
        self.received = signum
        print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank received a stop signal; all ranks agree, so they stop at the same step."""
        flag = torch.tensor([0.0 if self.received is None else 1.0], device=device)
        return bool(dist.all_reduce_sum(flag).item() > 0)

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
