"""Run under torchrun (or plainly): the gradients and logged scalars of one training step.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_step.py OUT.pt KEY=VALUE...

Builds the config from the overrides, restores ``--resume``-style state where the overrides'
run directory holds a checkpoint, takes one step with the optimizer held, and rank 0 saves the
gradients (summed over ranks by DDP then averaged) and the scalars to OUT.pt.
"""
import sys
from pathlib import Path

import torch

from langmim import dist
from langmim.config import load_config
from langmim.data.pretrain import build_pretrain_loader
from langmim.engine.checkpoint import read_resume_state
from langmim.engine.loop import Trainer, move
from langmim.io import list_checkpoints
from langmim.methods import build_method
from langmim.models.text import build_tokenizer


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a gradient, gathering FSDP's shards (DTensor) where there are any."""
    return tensor.full_tensor().clone() if hasattr(tensor, "full_tensor") else tensor.clone()


def one_step(out_path: str, overrides: list[str]) -> None:
    info = dist.setup("cpu")
    cfg = load_config(None, overrides)
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, with_teacher=True)
    trainer = Trainer(cfg, method, info.device)
    found = list_checkpoints(Path(cfg.output_dir))
    start = trainer.load_state_dict(read_resume_state(found[-1])) if found else 0
    trainer.optimizer.step = lambda: None  # keep the gradients
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    tokenizer = build_tokenizer(cfg.model.context_length) if method.has_text else None
    loader = build_pretrain_loader(cfg, tokenizer, method.visual.num_patches, start, info.rank, info.world_size,
                                   views=method.spec.needs_views)
    scalars = trainer.step(move(next(iter(loader)), info.device))
    grads = {k: full(p.grad) for k, p in method.named_parameters() if p.grad is not None}  # collective under FSDP
    if dist.is_main():
        torch.save({"grads": grads, "scalars": scalars, "start": start}, out_path)


if __name__ == "__main__":
    one_step(sys.argv[1], sys.argv[2:])
