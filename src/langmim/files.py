"""Writing files without following symbolic links, and reading JSON-lines logs that a crash may
have torn. Every file langmim writes into a run or result directory goes through here, so a link
planted there (``RUN/metrics.jsonl -> ~/.bashrc``) never redirects a write outside it: whole files
are written to a new temporary file and renamed over the name (a rename replaces a link, it never
follows it), and files opened in place are opened with ``O_NOFOLLOW``. Imports no torch.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from .errors import LangmimError

NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


class WriteFailed(LangmimError):
    """A file of the run could not be written (a full disk, a read-only folder)."""


def free_space(folder: Path) -> str:
    """The free space of ``folder``'s file system, e.g. "1.2 MB", or "unknown"."""
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB"
    except OSError:
        return "unknown"


def write_failure(err: Exception, folder: Path) -> str:
    """Why a write into ``folder`` failed, in words: torch.save reports a full disk as an internal
    RuntimeError ("unexpected pos ..."), so a file system with under 1 MiB left is named as full."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    try:
        if shutil.disk_usage(folder).free < 2**20:
            return "no space left on the device"
    except OSError:
        pass
    return str(err).splitlines()[0]


def failure_line(path: Path, why: str) -> str:
    """The one line for a failed write of ``path`` (``why`` from ``write_failure``, taken while a
    partial file still fills the disk), with the free space measured now: after the caller removed
    its temporary file, or the space that file held would be missing from the figure."""
    return f"could not write '{path}' ({why}); {free_space(path.parent)} free there"


def refuse_link(path: Path) -> None:
    """Refuse a symbolic link where langmim is about to write ``path``."""
    if path.is_symlink():
        raise LangmimError(f"'{path}' is a symbolic link (to '{os.readlink(path)}'); langmim writes no file through a "
                           "link in its run and result folders: remove it")


def open_no_follow(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` in one line instead of following it
    (new files get ``mode`` less the umask, as ``open`` gives them)."""
    try:
        return os.open(path, flags | NO_FOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(path)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a new temporary file beside ``path`` and rename it over ``path``: a
    reader sees the old file or the new one, and a link at ``path`` is replaced, not followed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd = open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except OSError as err:
        why = write_failure(err, path.parent)
        tmp.unlink(missing_ok=True)
        raise WriteFailed(failure_line(path, why)) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn or garbled line (a crash or a full disk mid-write)
    is skipped with a warning naming the file and line."""
    records = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            warnings.warn(f"'{path}' line {number} is not a JSON record (a torn write?); skipped", stacklevel=2)
    return records
