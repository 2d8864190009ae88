"""Weights and checkpoints on disk: one safe reader, one atomic writer, one checkpoint resolver.

Nothing here unpickles code: torch files load with ``torch.load(weights_only=True)`` and refuse
TorchScript and pickled references with a one-line reason; safetensors files are read as such.
A langmim checkpoint (``checkpoint-<step>.pt`` in a run directory) holds plain containers and
tensors only; a write goes to a temporary file that is fsynced and then renamed, so a killed
process leaves either the old file or the new one, never half a file.

A sharded checkpoint, ``checkpoint-<step>.dcp``, is a torch.distributed.checkpoint folder of
tensors only (DCP loads anything else with code allowed) and ``training.pt``; its ``.metadata``
pickle is read by an unpickler that admits DCP's own record types and nothing else.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

from .errors import CheckpointError, CodeInFileError
from .files import failure_line, open_no_follow, write_failure

DIGEST_SUFFIX = ".digest"  # checkpoint-N.pt.digest: "xxh3_128 HEX BYTES", the checksum of checkpoint-N.pt
DIGEST_ALGORITHM = "xxh3_128"  # a checksum against bit rot and partial copies (as ZFS's fletcher4), 30 GB/s; not a signature
SCHEMA_VERSION = 1  # of langmim checkpoints: the newest layout this version reads and writes
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.(pt|dcp)$")  # a file, or a sharded checkpoint's folder
WRAPPER_KEYS = ("state_dict", "model", "module")  # MAE's and many trainers' checkpoints nest the weights
FILE_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
              (b"\x1f\x8b", "a gzip archive"), (b"{", "a JSON file"), (b"%PDF", "a PDF file"))

# Test-only fault injection: SIGKILL this process inside its N-th atomic write (after the
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


class _HashingWriter:
    """A file that checksums what passes through it, so the digest costs no second read."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.hash, self.size = fh, xxhash.xxh3_128(), 0

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.size += memoryview(data).nbytes
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def atomic_save(obj: Any, path: Path, digest: bool = False) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``. With
    ``digest``, the file's checksum goes to ``path.digest`` before the rename, so every complete
    checkpoint has one. A write that fails (a full disk, a read-only directory) leaves nothing
    behind and raises one ``CheckpointError`` naming the path and the free space."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp_digest = tmp.with_name(tmp.name + DIGEST_SUFFIX)
    try:
        with os.fdopen(open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
            writer = _HashingWriter(fh) if digest else fh
            torch.save(obj, writer)
            fh.flush()
            _fault_point()
            os.fsync(fh.fileno())
        if digest:
            with os.fdopen(open_no_follow(tmp_digest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as fh:
                fh.write(f"{DIGEST_ALGORITHM} {writer.hash.hexdigest()} {writer.size}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_digest, digest_path(path))
        else:
            digest_path(path).unlink(missing_ok=True)  # a digest of the file replaced would now be wrong
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        why = write_failure(err, path.parent)  # before the partial file goes: a full disk still shows as one
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)
        raise CheckpointError(failure_line(path, why)) from None
    fsync_folder(path.parent)


def file_digest(path: Path) -> tuple[str, int]:
    """(hex checksum, bytes) of a file, read in 64 MiB chunks."""
    hasher, size = xxhash.xxh3_128(), 0
    with path.open("rb") as f:
        while chunk := f.read(64 * 2**20):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def verify_digest(path: Path) -> bool:
    """Check a checkpoint file against its ``.digest``; False where there is none (a checkpoint
    of an older langmim), a ``CheckpointError`` where it differs."""
    recorded = digest_path(path)
    if not recorded.is_file():
        return False
    fields = recorded.read_text(errors="replace").split()
    if len(fields) != 3 or fields[0] != DIGEST_ALGORITHM or not fields[2].isdigit():
        raise CheckpointError(f"checkpoint '{path}': its digest file '{recorded}' is damaged")
    found, size = file_digest(path)
    if size != int(fields[2]):
        raise CheckpointError(f"checkpoint '{path}' is truncated or grown: {size} bytes where its digest recorded {fields[2]}")
    if found != fields[1]:
        raise CheckpointError(f"checkpoint '{path}' fails its digest (damaged on disk since it was written: bit rot or a bad copy)")
    return True


_UNVERIFIED_NOTED: set[Path] = set()


def note_unverified(path: Path) -> None:
    """Say once per folder that a checkpoint without a digest (older langmim) is read unverified."""
    if path.parent not in _UNVERIFIED_NOTED:
        _UNVERIFIED_NOTED.add(path.parent)
        print(f"note: '{path}' has no digest (written by an older langmim); read without verification")


def non_finite_values(tensors: Any) -> tuple[int, list[str]]:
    """(count of NaN/inf values, names of the tensors holding them) over the floating-point tensors
    of a nested dict/list; one fused max-norm pass finds them, counting only where there are any."""
    named = [(name, t) for name, t in _tensors(tensors, "") if t.is_floating_point() and t.numel()]
    if not named:
        return 0, []
    norms = torch._foreach_norm([t.detach() for _, t in named], float("inf"))
    finite = torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).cpu()  # one device sync, not one per tensor
    bad = [named[i] for i in torch.nonzero(~finite).flatten().tolist()]
    return sum(int((~torch.isfinite(t)).sum()) for _, t in bad), [name for name, _ in bad]


def _tensors(obj: Any, prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj.to_local() if hasattr(obj, "to_local") else obj  # a DTensor: this rank's shard
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{i}" if prefix else str(i))


def check_finite(tensors: Any, path: Path, what: str = "checkpoint") -> None:
    """Refuse weights holding NaN or inf (a diverged run) in one line."""
    count, names = non_finite_values(tensors)
    if count:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CheckpointError(f"{what} '{path}' holds {count:,} non-finite values (NaN or inf, in {shown}): "
                              "the run had diverged; use an earlier checkpoint")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


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


def safe_torch_load(path: Path, map_location: str | torch.device | None = "cpu", what: str = "checkpoint") -> Any:
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

        # torch names the global it refused: "Unsupported global: GLOBAL builtins.print ...", or for a
        # module it blocks outright "... unsupported GLOBAL posix.system whose module posix is blocked"
        code = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(err))
        found = code.group(1) if code else next(iter(pickled_globals(path)), None)
        if found:
            raise CodeInFileError(f"{what} '{path}' holds a reference to {found}, which loading would run as code; refused") from None
        raise CheckpointError(f"{what} '{path}' is not a torch file of tensors and containers (a foreign or damaged "
                              "pickle)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{what} '{path}' is truncated or damaged ({type(err).__name__})") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, with a clear error for anything else."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({err})") from None


def read_weights(path: str | Path, folder_files: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A flat state dict from a weights file, or a folder holding one of ``folder_files``
    (``module.`` prefixes and ``model`` / ``state_dict`` wrappers removed)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in folder_files if (path / name).is_file()]
        if not found:
            raise CheckpointError(f"folder '{path}' holds none of the weight files {', '.join(folder_files)}")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"weights '{path}' do not exist")
    if path.suffix == ".safetensors":
        state: object = read_safetensors(path)[0]
    else:
        import argparse

        # MAE's and timm's training scripts store their argparse.Namespace beside the weights: data, not code
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = safe_torch_load(path, what="weights")
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in WRAPPER_KEYS):
        state = next(state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


TRAINING_FILE = "training.pt"  # a sharded checkpoint's step, scheduler, RNG, data position, config, optimizer settings
DCP_INDEX_TYPES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"}, "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}, "collections": {"OrderedDict"},
}


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and (path / TRAINING_FILE).is_file()


class _DCPIndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if name in DCP_INDEX_TYPES.get(module, ()) or is_dtype or (module, name) == ("torch", "Size"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_dcp_index(folder: Path) -> Any:
    """A sharded checkpoint's ``.metadata``, refused in one line if it refers to anything but DCP's
    record types or lists a pickled (non-tensor) entry."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = folder / ".metadata"
    try:
        with path.open("rb") as f:
            index = _DCPIndexUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"sharded checkpoint index '{path}' refers to {err}, which loading would run as code; refused") from None
    except (OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"sharded checkpoint index '{path}' is truncated or damaged ({type(err).__name__})") from None
    if not isinstance(index, Metadata):
        raise CheckpointError(f"'{path}' is not a torch.distributed.checkpoint index")
    pickled = [k for k, v in index.state_dict_metadata.items() if type(v).__name__ == "BytesStorageMetadata"]
    if pickled:
        raise CheckpointError(f"sharded checkpoint '{folder}' holds pickled objects ({', '.join(pickled[:3])}); refused")
    return index


def dcp_reader(folder: Path) -> Any:
    """DCP's file reader for ``folder``, reading its index with ``read_dcp_index``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            index = read_dcp_index(Path(self.path))
            index.storage_meta = index.storage_meta or StorageMeta()
            index.storage_meta.load_id = self.load_id
            return index

    return SafeReader(folder)


FOLDER_DIGESTS = "digests.txt"  # a sharded checkpoint's per-file checksums, one "ALGORITHM HEX BYTES NAME" a line


def write_folder_digests(folder: Path) -> None:
    """Checksum every file of a complete sharded checkpoint folder into ``digests.txt``."""
    lines = [f"{DIGEST_ALGORITHM} {' '.join(map(str, file_digest(f)))} {f.name}\n"
             for f in sorted(folder.iterdir()) if f.is_file() and f.name != FOLDER_DIGESTS]
    with os.fdopen(open_no_follow(folder / FOLDER_DIGESTS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as fh:
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())


def verify_folder_digests(folder: Path) -> None:
    """Check every file a sharded checkpoint's ``digests.txt`` lists (a folder without one, from an
    older langmim, is read unverified and said once)."""
    listing = folder / FOLDER_DIGESTS
    if not listing.is_file():
        note_unverified(folder)
        return
    for line in listing.read_text(errors="replace").splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) != 4 or fields[0] != DIGEST_ALGORITHM or not fields[2].isdigit():
            raise CheckpointError(f"sharded checkpoint '{folder}': its digest file '{listing}' is damaged")
        file = folder / fields[3]
        if not file.is_file():
            raise CheckpointError(f"sharded checkpoint '{folder}' lacks its file '{fields[3]}'")
        found, size = file_digest(file)
        if (found, size) != (fields[1], int(fields[2])):
            raise CheckpointError(f"sharded checkpoint '{folder}': '{fields[3]}' fails its digest (damaged on disk since it was written)")


def read_training_file(folder: Path) -> dict[str, Any]:
    """A sharded checkpoint's ``training.pt`` with the folder's ``path``: what a run resuming from
    it reads before each rank loads its own slices (its files' digests and its index are checked first)."""
    verify_folder_digests(folder)
    read_dcp_index(folder)
    return {**safe_torch_load(folder / TRAINING_FILE), "path": folder}


def read_sharded(folder: Path) -> dict[str, Any]:
    """A sharded checkpoint as one full state in this process, like a ``checkpoint-N.pt`` (its
    optimizer state keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    state = read_training_file(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP's note that it reads without a process group
        tensors = _load_state_dict_from_keys(storage_reader=dcp_reader(folder))
    state.pop("sharded"), state.pop("path")
    return {**state, "model": tensors["model"], "optimizer": {**state["optimizer"], "state": tensors.get("optimizer", {})}}


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary files are ignored)."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path_or_run: Path | str) -> Path:
    """A checkpoint file, or the newest checkpoint in a run directory."""
    path = Path(path_or_run)
    if path.is_dir() and not is_sharded_checkpoint(path):
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"run directory '{path}' holds no checkpoint-*.pt file")
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a langmim checkpoint, refusing truncated, foreign, code-carrying, damaged (its digest
    differs) or non-finite ones in one line."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        state = read_sharded(path)
    elif path.is_file():
        if not verify_digest(path):
            note_unverified(path)
        state = safe_torch_load(path, map_location)
    else:
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if not isinstance(state, dict) or state.get("format") != "langmim" or "model" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a langmim checkpoint (no 'format: langmim' entry)")
    if state.get("schema_version", 0) > SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has schema version {state['schema_version']}; this langmim reads up to {SCHEMA_VERSION}"
        )
    check_finite({"model": state["model"], "optimizer": state.get("optimizer", {}).get("state", {})}, path)
    return state


@dataclass
class SavedModel:
    """A trained langmim model as saved: where, its config (a plain dict), weights and step."""

    path: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    step: int | None


def read_saved_model(path: str | Path) -> SavedModel:
    """A checkpoint file, the newest checkpoint of a run directory, or a safetensors export
    (``langmim export --format safetensors``), read without building anything."""
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        file = Path(path)
        weights, metadata = read_safetensors(file)
        if "langmim_config" not in metadata:
            raise CheckpointError(f"'{file}' has no langmim_config metadata: not written by `langmim export --format safetensors`")
        try:
            config = json.loads(metadata["langmim_config"])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"'{file}': its langmim_config metadata is not JSON ({err.msg}, character {err.pos})") from None
        except RecursionError:
            raise CheckpointError(f"'{file}': its langmim_config metadata is nested too deeply to read") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"'{file}': its langmim_config metadata is JSON {type(config).__name__}, not an object of config keys")
        step = metadata.get("step") or None
        if step is not None and not step.isdecimal():
            raise CheckpointError(f"'{file}': its step metadata {step[:40]!r} is not a whole number")
        check_finite(weights, file, "weights")
        return SavedModel(file, config, weights, None if step is None else int(step))
    file = resolve_checkpoint(path)
    state = load_checkpoint(file)
    return SavedModel(file, state["config"], state["model"], int(state["step"]))
