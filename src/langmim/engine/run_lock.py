"""One live run per run directory: rank 0 holds an exclusive ``flock`` on ``RUN/.langmim.lock``
for as long as it trains, with its process id, host and start time written inside. A second
``langmim pretrain`` on the directory is refused with that run's process and host; the kernel
drops the lock when the holder exits in any way (SIGKILL included), so a directory left by a dead
run is taken over and resumes."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import IO

from ..errors import LangmimError
from ..files import open_no_follow

LOCK_NAME = ".langmim.lock"


class RunDirInUse(LangmimError):
    """Another live run holds the run directory."""


class RunLock:
    """The lock on a run directory, held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        handle = os.fdopen(open_lock_file(run_dir / LOCK_NAME), "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = holder_text(handle.read())
            handle.close()
            raise RunDirInUse(f"run directory '{run_dir}' is in use by {holder}; wait for that run to end "
                              "or set output_dir= to another directory") from None
        return cls(handle)

    def claim(self) -> None:
        """Write this process, host and time into the lock file, for a refused second run to name
        (``open_lock_file`` made sure the file is langmim's own to rewrite)."""
        self.handle.seek(0)
        self.handle.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, self.handle)
        self.handle.flush()

    def release(self) -> None:
        self.handle.close()  # closing the file drops the lock; the file stays for the next run


def open_lock_file(path: Path) -> int:
    """The lock file, opened without following a link and without truncating; refused when it is
    not a plain file of its own (a link, or a hard link to a file elsewhere), which ``claim``
    would otherwise overwrite."""
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LangmimError(f"'{path}' is not langmim's own lock file (it is {'a hard link' if stat.S_ISREG(info.st_mode) else 'not a file'}); "
                           "remove it and run again")
    return fd


def holder_text(content: str) -> str:
    """"the run of process PID on HOST (started ...)" from a lock file's content."""
    try:
        holder = json.loads(content)
        return f"the run of process {holder['pid']} on {holder['host']} (started {holder['started']})"
    except (ValueError, KeyError, TypeError):
        return "another run (its lock file names no process yet)"
