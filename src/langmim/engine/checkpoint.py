"""What a training checkpoint holds beside the weights (versions, RNG states) and the run
directory's housekeeping. Files are ``checkpoint-<step>.pt``, written by ``io.atomic_save`` and
read back by ``io.load_checkpoint``; RNG states are stored as tensors and the config as a dict,
so loading never unpickles code.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from ..io import list_checkpoints


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    from .. import __version__

    return {"langmim": __version__, "torch": str(torch.__version__), "git": git_revision()}


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files left by a process killed inside a checkpoint write."""
    stale = [p for p in run_dir.glob(".checkpoint-*.pt.tmp-*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
