"""The training checkpoint's layout and the run directory's housekeeping. A checkpoint holds
the model, optimizer and scheduler states, the RNG states, the data position, the config and the
versions (``training_state``); resuming checks the config and restores them all
(``restore_training_state``). Files are ``checkpoint-<step>.pt``, written by ``io.atomic_save``
and read back by ``io.load_checkpoint``; RNG states are stored as tensors and the config as a
dict, so loading never unpickles code.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
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
from ..files import open_no_follow
from ..io import (
    DIGEST_SUFFIX,
    SCHEMA_VERSION,
    atomic_save,
    checkpoint_path,
    digest_path,
    is_sharded_checkpoint,
    list_checkpoints,
    load_checkpoint,
    non_finite_values,
    read_training_file,
)
from .run_lock import RunLock
from .sharded_checkpoint import load_sharded, save_sharded


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


class TrainingDiverged(LangmimError):
    """The loss or the weights became NaN or infinite; only finite checkpoints are kept."""


def remove(path: Path) -> None:
    """Delete a checkpoint file (with its digest) or a sharded checkpoint's folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of a run."""
    for old in list_checkpoints(run_dir)[:-keep]:
        remove(old)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files (and sharded folders) left by a process killed inside a checkpoint
    write, and digests whose checkpoint was never renamed into place."""
    orphans = [d for d in run_dir.glob(f"checkpoint-*.pt{DIGEST_SUFFIX}") if not d.with_name(d.name.removesuffix(DIGEST_SUFFIX)).exists()]
    stale = [*run_dir.glob(".checkpoint-*.pt.tmp-*"), *run_dir.glob(".checkpoint-*.dcp.tmp"), *run_dir.glob(".model-*.pt.tmp-*"), *orphans]
    for path in stale:
        remove(path)
    return stale


def prepare_run_dir(path: Path, resuming: bool) -> RunLock:
    """Create and lock the run directory, refusing one we cannot write, another live run holds,
    or we would overwrite; the caller releases the lock when its run ends."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.unlink(missing_ok=True)  # a link planted there goes, its target untouched
        os.close(open_no_follow(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
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


@contextlib.contextmanager
def run_directory(cfg: Config, resume: str | None) -> Iterator[tuple[dist.DistInfo, Path, str | None]]:
    """For the block: the process group set up (under torchrun), the run directory prepared and
    locked by rank 0 (``prepare_run_dir``, stale temporaries removed), and the resume request,
    ``latest`` for a worker group torchrun restarted after a failure (``--max-restarts``)."""
    info = dist.setup(cfg.train.device, cfg.train.dist_timeout)
    run_dir = Path(cfg.output_dir)
    if resume is None and dist.elastic_restarts():  # a group torchrun restarted after a failure continues its run
        resume = "latest"
        if dist.is_main():
            print(f"torchrun restart {dist.elastic_restarts()}: resuming from the newest checkpoint in '{run_dir}'")
    lock = None
    if dist.is_main():
        lock = prepare_run_dir(run_dir, resuming=resume is not None)  # held until this run ends
        for stale in remove_stale_temporaries(run_dir):
            print(f"removed {stale.name}, left by a run killed while writing a checkpoint")
    try:
        yield info, run_dir, resume
    finally:
        if lock is not None:
            lock.release()


def find_resume_state(resume: str | None, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from and its state (``read_resume_state``): for ``latest`` the
    newest intact one in the run dir (None if there is none yet), skipping, with one line each,
    checkpoints that are truncated, fail their digest or hold non-finite values; else the path given."""
    if resume is None:
        return None
    if resume != "latest":
        return Path(resume), read_resume_state(Path(resume))
    found = list_checkpoints(run_dir)
    for path in reversed(found):
        try:
            return path, read_resume_state(path)
        except CheckpointError as err:
            if dist.is_main():
                print(f"skipped {path.name}: {err}")
    if found:
        raise CheckpointError(f"--resume latest: none of the {len(found)} checkpoints in '{run_dir}' is intact (see above); "
                              "move them away to start afresh")
    return None


def run_record(cfg: Config, scheduler: torch.optim.lr_scheduler.LRScheduler, step: int,
               streams: list[dict] | None = None) -> dict[str, Any]:
    """Everything of the state after ``step`` but the model and optimizer: the scheduler, RNG
    states, the data position (with every rank's shard ``streams`` where the data are shards),
    the config and the versions."""
    return {
        "format": "langmim",
        "schema_version": SCHEMA_VERSION,
        "method": cfg.method,
        "step": step,
        "data_position": {"next_sample": step * cfg.train.batch_size, **({"streams": streams} if streams else {})},
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": to_dict(cfg),
        "versions": versions(),
    }


def read_resume_state(path: Path) -> dict[str, Any]:
    """What a resuming run reads first: a checkpoint file whole, or a sharded checkpoint's record
    (``restore_training_state`` then has every rank load only its own slices)."""
    return read_training_file(path) if is_sharded_checkpoint(path) else load_checkpoint(path)


def training_state(cfg: Config, method: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, sharded: bool,
                   streams: list[dict] | None = None) -> dict[str, Any]:
    """The full state after ``step`` (``run_record`` with the model and optimizer); with FSDP
    every rank must call it (it gathers the shards)."""
    if sharded:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(method, options=options)
        optimizer_state = get_optimizer_state_dict(method, optimizer, options=options)
    else:
        model, optimizer_state = method.state_dict(), optimizer.state_dict()
    return {**run_record(cfg, scheduler, step, streams), "model": model, "optimizer": optimizer_state}


def restore_training_state(state: dict[str, Any], method: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler, sharded: bool) -> int:
    """Load ``training_state``'s model, optimizer, scheduler and RNG states; return its step."""
    if state.get("sharded"):  # a checkpoint-N.dcp folder: every rank reads what its shards need
        load_sharded(state["path"], method, optimizer, state["optimizer"]["param_groups"])
    elif sharded or by_name(state["optimizer"]):  # every rank reads the full state and keeps its shards
        options = StateDictOptions(full_state_dict=sharded)
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


def by_name(optimizer_state: dict[str, Any]) -> bool:
    """Whether an optimizer state is keyed by parameter name (as FSDP and sharded checkpoints
    store it) rather than by position (``Optimizer.state_dict``)."""
    return any(isinstance(group["params"][0], str) for group in optimizer_state["param_groups"] if group["params"])


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

    cfg: Config
    method: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sharded: bool
    stream_states: dict[int, dict]

    def state_dict(self, step: int, streams: list[dict] | None = None) -> dict[str, Any]: ...


def newest_checkpoint_line(run_dir: Path) -> str:
    """Where a diverged run can continue from: its newest checkpoint (every one was checked
    finite before it was written), or that there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        return f"no checkpoint was written to '{run_dir}' before that"
    return f"the newest finite checkpoint is '{found[-1]}'"


def check_weights_finite(trainer: Checkpointable, run_dir: Path, step: int) -> None:
    """Refuse to save weights or optimizer moments holding NaN or inf (all ranks agree, each
    checking its own shards): the update of a step whose loss was finite can still overflow."""
    params = list(trainer.method.parameters())
    local, _ = non_finite_values({"params": params, "optimizer": trainer.optimizer.state_dict()["state"]})
    total = int(dist.all_reduce_sum(torch.tensor([float(local)], device=params[0].device)).item())
    if total:
        raise TrainingDiverged(f"the weights became non-finite ({total:,} NaN or inf values) by step {step}; that state is not "
                               f"saved, and {newest_checkpoint_line(run_dir)}")


def save_checkpoint(trainer: Checkpointable, run_dir: Path, step: int, keep: int) -> None:
    """Write ``checkpoint-<step>.pt`` (with its digest) from rank 0 (all ranks gather under FSDP),
    or with ``train.checkpoint_format=sharded`` the folder ``checkpoint-<step>.dcp`` from every rank,
    keeping the newest ``keep``; a non-finite state is never written. Every rank must call it."""
    check_weights_finite(trainer, run_dir, step)
    streams = dist.gather_objects(trainer.stream_states)
    streams = streams if any(streams) else None
    if trainer.cfg.train.checkpoint_format == "sharded":
        record = run_record(trainer.cfg, trainer.scheduler, step, streams) if dist.is_main() else {}
        save_sharded(trainer.method, trainer.optimizer, record, run_dir / f"checkpoint-{step:08d}.dcp")
    else:
        state = trainer.state_dict(step, streams) if dist.is_main() or trainer.sharded else None
        if dist.is_main():
            atomic_save(state, checkpoint_path(run_dir, step), digest=True)
    if dist.is_main():
        prune_checkpoints(run_dir, keep)
    dist.barrier()
