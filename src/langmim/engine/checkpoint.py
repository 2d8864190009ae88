"""Full-state checkpoints, written atomically and loadable with ``torch.load(weights_only=True)``.

A checkpoint holds plain containers and tensors only (RNG states as tensors, the config as a
dict), so loading never unpickles code. Files are ``checkpoint-<step>.pt`` in the run
directory; a write goes to a temporary file that is fsynced and then renamed, so a killed
run leaves either the old set of checkpoints or the new one, never half a file.
"""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

SCHEMA_VERSION = 1
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


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


# Test-only fault injection: SIGKILL this process inside its N-th checkpoint write (after the
# temporary file is written, before it is renamed), a moment too short to hit from outside.
KILL_IN_SAVE_ENV = "LANGMIM_TEST_KILL_IN_SAVE"
_saves_started = 0


def _fault_point() -> None:
    global _saves_started
    target = os.environ.get(KILL_IN_SAVE_ENV)
    if target is None:
        return
    _saves_started += 1
    if _saves_started == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            _fault_point()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary files are ignored)."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files left by a process killed inside a checkpoint write."""
    stale = [p for p in run_dir.glob(".checkpoint-*.pt.tmp-*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


FILE_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
              (b"\x1f\x8b", "a gzip archive"), (b"{", "a JSON file"), (b"%PDF", "a PDF file"))


def describe_foreign(head: bytes) -> str:
    """What a file that is not a torch file looks like, from its first bytes."""
    for magic, kind in FILE_KINDS:
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised bytes"
    return "a text file" if "".join(text.split()).isprintable() else "unrecognised bytes"


def pickled_globals(path: Path) -> list[str]:
    """The Python names a plain pickle file refers to, read from its opcodes without running it."""
    import pickletools

    names, strings = [], []
    try:
        with path.open("rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a damaged pickle: what was read so far is all there is
        pass
    return names


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` whose refusals say in one line what the file is: not a
    torch file, truncated, or holding code (which is never loaded, nor advised to be)."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(16)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{what} '{path}' is truncated: a zip archive (as torch writes) cut short")
    if not is_zip and not head.startswith(b"\x80"):  # torch files are zip archives (or, long ago, pickles)
        raise CheckpointError(f"{what} '{path}' is not a torch file: it looks like {describe_foreign(head)}")
    if is_zip and is_torchscript(path):
        raise CheckpointError(f"{what} '{path}' is a TorchScript archive (like OpenAI's CLIP .pt release), which langmim does "
                              "not load since it carries code; use the weights as a state dict (for OpenAI's CLIP: open_clip's "
                              "Hub copy, open_clip_pytorch_model.bin beside its open_clip_config.json)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on legacy pickles; the errors below say more
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        found = code.group(1) if code else next(iter(pickled_globals(path)), None)
        if found:
            raise CheckpointError(f"{what} '{path}' holds a reference to {found}, which loading would run as code; refused") from None
        raise CheckpointError(f"{what} '{path}' is not a torch file of tensors and containers (a foreign or damaged "
                              "pickle)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{what} '{path}' is truncated or damaged ({type(err).__name__})") from None


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a langmim checkpoint, refusing truncated, foreign or code-carrying files clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    state = safe_torch_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != "langmim" or "model" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a langmim checkpoint (no 'format: langmim' entry)")
    if state.get("schema_version", 0) > SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has schema version {state['schema_version']}; this langmim reads up to {SCHEMA_VERSION}"
        )
    return state


def resolve_checkpoint(path_or_run: Path | str) -> Path:
    """A checkpoint file, or the newest checkpoint in a run directory."""
    path = Path(path_or_run)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"run directory '{path}' holds no checkpoint-*.pt file")
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return path
