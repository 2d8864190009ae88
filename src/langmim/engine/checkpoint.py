"""The training checkpoint's layout and the run directory's housekeeping. A checkpoint holds
the model, optimizer and scheduler states, the RNG states, the data position, the config and the
versions (``training_state``); resuming checks the config and restores them all
(``restore_training_state``). Files are ``checkpoint-<step>.pt``, written by ``io.atomic_save``
and read back by ``io.load_checkpoint``; RNG states are stored as tensors and the config as a
dict, so loading never unpickles code.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .. import dist
from ..config import Config, config_differences, config_from_dict, to_dict
from ..errors import CheckpointError, LangmimError
from ..io import SCHEMA_VERSION, atomic_save, checkpoint_path, list_checkpoints
from .run_lock import RunLock


def git_revision() -> str:
    """The commit of the langmim checkout that wrote a checkpoint ("unknown" outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """What wrote a checkpoint: langmim's version, torch's, and the git commit."""
    from .. import __version__

    return {"langmim": __version__, "torch": str(torch.__version__), "git": git_revision()}


def rng_state() -> dict[str, Any]:
    """The CPU (and CUDA) generator states, so a resumed run draws what an uninterrupted one would."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state``'s generators (the CUDA ones where this machine has CUDA)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of a run."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files left by a process killed inside a checkpoint write."""
    stale = [p for p in run_dir.glob(".checkpoint-*.pt.tmp-*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prepare_run_dir(path: Path, resuming: bool) -> RunLock:
    """Create and lock the run directory, refusing one we cannot write, another live run holds,
    or we would overwrite; the caller releases the lock when its run ends."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise LangmimError(f"run directory '{path}' is not writable ({err.strerror})") from None
    lock = RunLock.acquire(path)
    if not resuming and list_checkpoints(path):
        lock.release()
        raise LangmimError(
            f"run directory '{path}' already holds checkpoints; pass --resume latest to continue it "
            "or set output_dir= to a new directory"
        )
    lock.claim()
    return lock


def find_resume_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """``latest`` -> newest checkpoint in the run dir (None if there is none yet), else a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    return Path(resume)


def training_state(cfg: Config, method: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, sharded: bool) -> dict[str, Any]:
    """The full state after ``step``; with FSDP every rank must call it (it gathers the shards)."""
    if sharded:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(method, options=options)
        optimizer_state = get_optimizer_state_dict(method, optimizer, options=options)
    else:
        model, optimizer_state = method.state_dict(), optimizer.state_dict()
    return {
        "format": "langmim",
        "schema_version": SCHEMA_VERSION,
        "method": cfg.method,
        "step": step,
        "data_position": {"next_sample": step * cfg.train.batch_size},
        "model": model,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": to_dict(cfg),
        "versions": versions(),
    }


def restore_training_state(state: dict[str, Any], method: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler, sharded: bool) -> int:
    """Load ``training_state``'s model, optimizer, scheduler and RNG states; return its step."""
    if sharded:  # every rank reads the full state and keeps its shards
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(method, state["model"], options=options)
        set_optimizer_state_dict(method, optimizer, state["optimizer"], options=options)
    else:
        method.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit this config's parameter groups "
                                  f"({err}); resume with the run's own config.yaml") from None
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def check_resumable(state: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint whose saved config differs from ``cfg``, naming the first differences."""
    saved = to_dict(config_from_dict(state["config"]))
    diffs = config_differences(saved, to_dict(cfg))
    if diffs:
        shown = ", ".join(f"{k} (checkpoint: {_get(saved, k)!r}, now: {_get(to_dict(cfg), k)!r})" for k in diffs[:4])
        raise CheckpointError(f"cannot resume from '{path}': the config differs in {shown}")


def _get(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else None
    return data


class Checkpointable(Protocol):
    """What ``save_checkpoint`` needs of a trainer (``loop.Trainer``), without importing the loop."""

    sharded: bool

    def state_dict(self, step: int) -> dict[str, Any]: ...


def save_checkpoint(trainer: Checkpointable, run_dir: Path, step: int, keep: int) -> None:
    """Write ``checkpoint-<step>.pt`` from rank 0 (all ranks gather under FSDP), keeping the newest ``keep``."""
    state = trainer.state_dict(step) if dist.is_main() or trainer.sharded else None
    if dist.is_main():
        atomic_save(state, checkpoint_path(run_dir, step))
        prune_checkpoints(run_dir, keep)
    dist.barrier()
