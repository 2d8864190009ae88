"""torch.distributed helpers that degrade to no-ops in a single process: rank and world size,
collectives (gather with gradient, sums, means of logged scalars), and process-group setup."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from .errors import LangmimError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def elastic_restarts() -> int:
    """How often torchrun has restarted this worker group (``--max-restarts``): 0 on the first start."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to each rank's part."""
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (on every rank)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(scalars: dict[str, float]) -> dict[str, float]:
    """Average logged scalars over ranks, so the log shows the global batch's values."""
    if not is_distributed():
        return scalars
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    values = torch.tensor(list(scalars.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(scalars, (values / world_size()).tolist()))


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def slurm_environment(env: dict[str, str]) -> dict[str, str]:
    """torch.distributed's variables for a job started by ``srun`` (one task per process)
    rather than torchrun: RANK, WORLD_SIZE and LOCAL_RANK from SLURM's task ids. MASTER_ADDR
    and MASTER_PORT must come from the job script (e.g. the first host of the allocation)."""
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", 1)) < 2:
        return {}
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise LangmimError(f"started by srun with {env['SLURM_NTASKS']} tasks but {' and '.join(missing)} is not set; "
                           "export MASTER_ADDR=<first node> MASTER_PORT=<free port> in the job script, or launch with torchrun")
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}


def setup(device_name: str, timeout_s: float = 1800) -> DistInfo:
    """Initialise the process group when launched by torchrun or srun (NCCL on CUDA, Gloo otherwise);
    a collective (or the group's start) that waits longer than ``timeout_s`` fails, so that a group
    stuck on a dead peer ends and torchrun can restart it."""
    os.environ.update(slurm_environment(dict(os.environ)))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name, local_rank)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=timeout_s)
        store, rank_, size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps one store across the restarts of a group: keys of a dead attempt (a rank's
        # Gloo address) would otherwise be read by the next one, whose start then fails on them
        store = dist.PrefixStore(f"langmim/attempt-{elastic_restarts()}", store)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=store, rank=rank_, world_size=size,
                                timeout=timeout)
    return DistInfo(rank(), world_size(), local_rank, device)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
