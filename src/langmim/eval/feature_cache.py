"""The evaluation's cache: values computed once per evaluation (in memory) and, for features, once
per checkpoint (on disk, under ``out_dir/feature_cache``), so re-evaluating is instant."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CodeInFileError
from ..interface import LoadedModel
from ..io import atomic_save, safe_torch_load


def checkpoint_identity(model: LoadedModel) -> str | None:
    """The checkpoint file's path, size and modification time; None for a model without one."""
    ckpt = model.checkpoint_path
    if ckpt is None or not Path(ckpt).is_file():
        return None
    stat = Path(ckpt).stat()
    return f"{Path(ckpt).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


@dataclass
class FeatureCache:
    """Values by key: ``remember`` keeps them for this evaluation, ``cached`` also on disk, keyed
    by the checkpoint file and the key (a model without a checkpoint file is not stored)."""

    model: LoadedModel
    out_dir: Path | None = None
    log: Callable[[str], None] = print
    memo: dict[str, Any] = field(default_factory=dict)

    def remember(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, memoised under ``key`` for this evaluation."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, memoised under ``key`` for this evaluation and on disk per checkpoint."""
        return self.remember(key, lambda: self._from_disk_or_compute(key, compute))

    def path(self, key: str) -> Path | None:
        """Where ``key``'s value of this checkpoint is stored; None where nothing is."""
        identity = checkpoint_identity(self.model)
        if self.out_dir is None or identity is None:
            return None
        digest = hashlib.sha1(f"{identity}|{key}".encode()).hexdigest()[:16]
        return self.out_dir / "feature_cache" / f"{digest}.pt"

    def _from_disk_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        """The stored value, else ``compute()`` stored. A damaged entry (truncated, foreign) is
        recomputed with a line saying so; one holding code is refused, as every reader refuses it."""
        path = self.path(key)
        if path is not None and path.is_file():
            try:
                return safe_torch_load(path, map_location=None, what="feature cache")  # tensors back where they were computed
            except CodeInFileError:
                raise
            except CheckpointError as err:
                self.log(f"{err}; recomputing it")
        start = time.perf_counter()
        value = compute()
        self.log(f"features: {key} in {time.perf_counter() - start:.1f}s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(value, path)
        return value
