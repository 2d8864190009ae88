"""Writing and restoring sharded checkpoints (``train.checkpoint_format=sharded``): every rank
writes its own shards of the model and optimizer tensors through torch.distributed.checkpoint,
so no rank ever holds the whole state, and a run resumes from them on any number of ranks (DCP
re-slices the tensors to the reader's sharding). The folder is written under a temporary name
and renamed when complete, so ``--resume latest`` never picks a partial one."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .. import dist
from ..errors import CheckpointError
from ..files import free_space
from ..io import TRAINING_FILE, atomic_save, dcp_reader, fsync_folder, write_folder_digests


def save_sharded(method: nn.Module, optimizer: torch.optim.Optimizer, record: dict[str, Any], path: Path) -> None:
    """Write the folder ``path``: each rank's tensor shards, and rank 0's ``record`` (``checkpoint.run_record``)
    with the optimizer's hyper-parameters as ``training.pt``. Every rank must call it."""
    tmp = path.with_name(f".{path.name}.tmp")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    optimizer_state = get_optimizer_state_dict(method, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP's notes on a single process without a process group
            dcp.save({"model": get_model_state_dict(method), "optimizer": optimizer_state["state"]}, checkpoint_id=tmp)
        if dist.is_main():
            record = {**record, "sharded": True, "model": {}, "optimizer": {"param_groups": optimizer_state["param_groups"]}}
            atomic_save(record, tmp / TRAINING_FILE)
            write_folder_digests(tmp)
    except (CheckpointException, CheckpointError, OSError, RuntimeError) as err:
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        why = str(err).splitlines()[0][:200] if not isinstance(err, CheckpointError) else "its training.pt could not be written"
        raise CheckpointError(f"could not write '{path}' ({why}); {free_space(path.parent)} free there") from None
    if dist.is_main():
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_folder(path.parent)


def load_sharded(path: Path, method: nn.Module, optimizer: torch.optim.Optimizer, param_groups: list[dict]) -> None:
    """Fill ``method`` and ``optimizer``, however they are sharded, from the folder ``path``; every
    rank reads only the slices it holds. Every rank must call it."""
    model_state = get_model_state_dict(method)
    optimizer_state = get_optimizer_state_dict(method, optimizer)  # initialises Adam's moments to be overwritten
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load({"model": model_state, "optimizer": optimizer_state["state"]}, storage_reader=dcp_reader(path))
    set_model_state_dict(method, model_state)
    set_optimizer_state_dict(method, optimizer, {"state": optimizer_state["state"], "param_groups": param_groups})
