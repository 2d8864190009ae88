"""Running a model for evaluation without leaving a trace on it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """``model`` in eval mode for the block, its train/eval mode restored afterwards (a model in
    training may be evaluated between steps); yields the device its parameters are on."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)
