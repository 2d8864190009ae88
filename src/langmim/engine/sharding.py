"""FSDP2 sharding of a pre-training method over all ranks (``train.fsdp``)."""
from __future__ import annotations

from torch import nn
from torch.distributed.fsdp import fully_shard

from ..methods.base import PretrainMethod


def shard_model(method: PretrainMethod) -> list[nn.Parameter]:
    """FSDP2: shard each block the method names (``fsdp_blocks``), then the rest, over all ranks.
    Scalar parameters (the logit scale) cannot be sharded: they stay replicated and are returned,
    for the trainer to average their gradients itself. A method that cannot be sharded refuses
    ``train.fsdp`` in its rules (``langmim.method_specs``)."""
    for block in method.fsdp_blocks():
        fully_shard(block)
    scalars = [p for p in method.parameters() if p.ndim == 0 and p.requires_grad]
    fully_shard(method, ignored_params=set(scalars))
    return scalars
