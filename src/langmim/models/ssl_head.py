"""SLIP's image MLP for its SimCLR term, with batch norm over all ranks' samples."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .. import dist


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of all ranks' samples together, as
    SyncBatchNorm's (which runs on GPUs only): each rank normalises the gathered batch and keeps
    its own rows, gradients flowing back to every rank's part. Under gradient accumulation that
    is one micro-batch at a time, as in SLIP's release."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_distributed()):
            return super().forward(x)
        full = dist.gather_with_grad(x)
        out = F.batch_norm(full, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps)
        start = dist.rank() * x.shape[0]
        return out[start:start + x.shape[0]]


def simclr_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """SLIP's ``image_mlp``: (Linear, batch norm, ReLU) twice, then Linear; its layer names."""
    return nn.Sequential(OrderedDict([
        ("layer1", nn.Linear(in_dim, hidden)), ("bn1", GlobalBatchNorm1d(hidden)), ("relu1", nn.ReLU(inplace=True)),
        ("layer2", nn.Linear(hidden, hidden)), ("bn2", GlobalBatchNorm1d(hidden)), ("relu2", nn.ReLU(inplace=True)),
        ("layer3", nn.Linear(hidden, out_dim)),
    ]))
