"""Exact resumption of a run on WebDataset shards: a run that crashes at a random step and resumes
from its last checkpoint trains on exactly the samples, and ends with exactly the weights, of the
run that never stopped, with and without loader workers and resampling."""
import zlib

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from langmim.config import load_config
from langmim.data import pretrain as pretrain_data
from langmim.data.shards import write_scene_shards
from langmim.engine import loop
from langmim.io import load_checkpoint

STEPS = 9


class Crash(Exception):
    """Stands in for a killed process: the run stops between two steps without a checkpoint."""


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_scene_shards(out, num_samples=70, shard_size=10)
    return str(out / "{00000..00006}.tar")


def record_keys(monkeypatch, seen: list[list[int]], crash_after: int | None = None) -> None:
    """Each batch the loop trains on appends its samples' key checksums to ``seen`` (the collator
    runs in the loader workers, so the keys travel in the batch); ``crash_after`` batches raise Crash."""
    collate = pretrain_data.PretrainCollator.__call__
    move = loop.move

    def collate_with_keys(self, samples):
        return {**collate(self, samples), "key_crc": torch.tensor([zlib.crc32(s["key"].encode()) for s in samples])}

    def move_and_record(batch, device):
        if crash_after is not None and len(seen) == crash_after:
            raise Crash
        seen.append(batch.pop("key_crc").tolist())
        return move(batch, device)

    monkeypatch.setattr(pretrain_data.PretrainCollator, "__call__", collate_with_keys)
    monkeypatch.setattr(loop, "move", move_and_record)


@pytest.mark.parametrize("workers, resampled", [(0, False), (2, True)])
def test_a_crashed_shard_run_resumes_on_exactly_the_samples_and_weights_of_an_uninterrupted_one(
        tmp_path, monkeypatch, shards, workers, resampled):
    def config(run):
        return load_config(None, tiny_overrides(tmp_path / run, "clip", steps=STEPS, **{
            "data.name": "webdataset", "data.root": shards, "train.batch_size": 4, "train.ckpt_every": 3,
            "data.shuffle_buffer": 9, "data.num_workers": workers, "data.resampled": str(resampled).lower()}))

    uninterrupted: list[list[int]] = []
    with monkeypatch.context() as patch:
        record_keys(patch, uninterrupted)
        loop.pretrain(config("whole"), log_tensorboard=False)

    crash_at = int(np.random.default_rng(workers + 2 * resampled).integers(4, STEPS - 1))  # a step between checkpoints
    before: list[list[int]] = []
    with monkeypatch.context() as patch, pytest.raises(Crash):
        record_keys(patch, before, crash_after=crash_at)
        loop.pretrain(config("crashed"), log_tensorboard=False)
    last_checkpoint = crash_at // 3 * 3
    after: list[list[int]] = []
    with monkeypatch.context() as patch:
        record_keys(patch, after)
        loop.pretrain(config("crashed"), resume="latest", log_tensorboard=False)

    assert before[:crash_at] == uninterrupted[:crash_at]
    assert after == uninterrupted[last_checkpoint:]  # the steps after the checkpoint are trained again on the same samples
    assert len({k for batch in uninterrupted for k in batch}) > 30  # the stream really moves through the shards
    whole = load_checkpoint(tmp_path / "whole" / f"checkpoint-{STEPS:08d}.pt")["model"]
    resumed = load_checkpoint(tmp_path / "crashed" / f"checkpoint-{STEPS:08d}.pt")["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_changed_worker_count_or_shard_list_is_said_and_the_run_goes_on(tmp_path, shards, capsys):
    def run(workers, steps, root=shards, resume=None):
        cfg = load_config(None, tiny_overrides(tmp_path / "run", "clip", steps=steps, **{
            "data.name": "webdataset", "data.root": root, "train.batch_size": 4, "data.num_workers": workers}))
        loop.pretrain(cfg, resume=resume, log_tensorboard=False)

    run(0, 1)
    run(2, 2, resume="latest")
    assert "data.num_workers changed" in capsys.readouterr().out
    run(2, 3, root=shards.replace("00006", "00005"), resume="latest")  # data.root may move, but here it lost a shard
    assert "data.root now lists 6 shards, the checkpoint's streams 7" in capsys.readouterr().out
