"""Sharded checkpoints (``train.checkpoint_format=sharded``) in one process: a run stopped and
resumed from its folders ends with the weights of a run on one-file checkpoints, the folder
reads and exports like a file, and a folder whose index would run code is refused. (Two FSDP
ranks writing one and one process resuming it: tests/test_distributed.py.)"""
import pickle

import pytest
import torch

from conftest import tiny_overrides
from langmim.cli import main
from langmim.config import load_config
from langmim.engine.loop import pretrain
from langmim.errors import CheckpointError
from langmim.io import TRAINING_FILE, list_checkpoints, load_checkpoint


def test_a_sharded_run_resumes_exactly_and_exports_one_file(tmp_path):
    def config(run, checkpoint_format):
        return load_config(None, tiny_overrides(tmp_path / run, "clip", steps=4, **{
            "train.ckpt_every": 2, "train.checkpoint_format": checkpoint_format}))

    pretrain(config("file", "file"), log_tensorboard=False)
    pretrain(config("sharded", "sharded"), log_tensorboard=False, stop_after=2)
    pretrain(config("sharded", "sharded"), resume="latest", log_tensorboard=False)
    run = tmp_path / "sharded"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000002.dcp", "checkpoint-00000004.dcp"]
    whole = load_checkpoint(tmp_path / "file" / "checkpoint-00000004.pt")
    folder = load_checkpoint(run / "checkpoint-00000004.dcp")
    assert folder["step"] == 4 and whole["model"].keys() == folder["model"].keys()
    assert all(torch.equal(whole["model"][k], folder["model"][k]) for k in whole["model"])

    assert main(["export", str(run), "--format", "checkpoint"]) == 0
    exported = load_checkpoint(run / "checkpoint-00000004.pt")
    assert all(torch.equal(exported["model"][k], folder["model"][k]) for k in folder["model"])
    assert main(["export", str(run / "checkpoint-00000004.dcp"), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]) == 0


def test_a_sharded_index_that_would_run_code_is_refused(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, ("echo ran",)

    folder = tmp_path / "checkpoint-00000002.dcp"
    folder.mkdir()
    torch.save({"format": "langmim", "step": 2, "optimizer": {"param_groups": []}}, folder / TRAINING_FILE)
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="system, which loading would run as code; refused"):
        load_checkpoint(folder)
