"""Sharded checkpoints on disk: a ``checkpoint-N.dcp`` folder that torch.distributed.checkpoint
wrote (each rank its own shards of the model and optimizer tensors) beside ``training.pt``, the
rest of the training state (step, scheduler, RNG and data positions, config, the optimizer's
hyper-parameters). Only tensors go into the shards: DCP stores anything else pickled and loads it
with code execution allowed, and its ``.metadata`` index is a pickle too, so it is read here by an
unpickler that admits DCP's own record types and nothing else."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from .errors import CheckpointError

TRAINING_FILE = "training.pt"
METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and (path / TRAINING_FILE).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        torch_value = getattr(torch, name, None) if module == "torch" else None
        if name in METADATA_TYPES.get(module, ()) or isinstance(torch_value, torch.dtype) or (module, name) == ("torch", "Size"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


class SafeReader(FileSystemReader):
    """DCP's file reader, whose index admits only DCP's record types and tensor entries."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with path.open("rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"sharded checkpoint index '{path}' refers to {err}, which loading would run as code; refused") from None
        except (OSError, EOFError, ValueError) as err:
            raise CheckpointError(f"sharded checkpoint index '{path}' is truncated or damaged ({type(err).__name__})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"'{path}' is not a torch.distributed.checkpoint index")
        pickled = [k for k, v in metadata.state_dict_metadata.items() if type(v).__name__ == "BytesStorageMetadata"]
        if pickled:
            raise CheckpointError(f"sharded checkpoint '{self.path}' holds pickled objects ({', '.join(pickled[:3])}); refused")
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_training_file(path: Path) -> dict[str, Any]:
    """A sharded checkpoint's ``training.pt``, marked ``sharded`` with the folder's ``path``: what a
    run resuming from it reads before each rank loads its own slices."""
    from .io import safe_torch_load

    SafeReader(path).read_metadata()  # refused here with a clear line, before DCP wraps the error in its own
    return {**safe_torch_load(path / TRAINING_FILE), "path": path}


def read_sharded(path: Path) -> dict[str, Any]:
    """A sharded checkpoint as one full state in this process, like a ``checkpoint-N.pt`` (its
    optimizer state keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    state = read_training_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP's note that it reads without a process group
        tensors = _load_state_dict_from_keys(storage_reader=SafeReader(path))
    state.pop("sharded"), state.pop("path")
    return {**state, "model": tensors["model"], "optimizer": {**state["optimizer"], "state": tensors.get("optimizer", {})}}
