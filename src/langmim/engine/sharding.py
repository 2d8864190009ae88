"""FSDP2 sharding of a pre-training method over all ranks (``train.fsdp``)."""
from __future__ import annotations

from torch import nn
from torch.distributed.fsdp import fully_shard

from ..errors import LangmimError
from ..methods.base import PretrainMethod


def shard_model(method: PretrainMethod) -> list[nn.Parameter]:
    """FSDP2: shard each transformer block of the trained towers, then the rest, over all ranks.
    Scalar parameters (the logit scale) cannot be sharded: they stay replicated and are returned,
    for the trainer to average their gradients itself."""
    if method.name == "milan":
        raise LangmimError("train.fsdp is not supported for MILAN yet (its frozen teacher would be sharded too); use DDP")
    blocks = list(method.visual.blocks)
    text = getattr(method, "text", None)
    if text is not None:
        blocks += list(text.transformer.resblocks)
    for block in blocks:
        fully_shard(block)
    scalars = [p for p in method.parameters() if p.ndim == 0 and p.requires_grad]
    fully_shard(method, ignored_params=set(scalars))
    return scalars
