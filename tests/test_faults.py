"""A run SIGKILLed at random moments, also inside checkpoint writes, resumes to the very weights
of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from langmim.io import KILL_IN_SAVE_ENV, list_checkpoints, load_checkpoint

STEPS = 200
KILLS = 10


def logged_lines(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def launch(overrides, env):
    cmd = [sys.executable, "-m", "langmim.cli", "pretrain", "--no-tensorboard", "--resume", "latest", *overrides]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_random_sigkills_resume_to_identical_weights(tmp_path):
    extra = {"train.ckpt_every": 7, "train.keep_checkpoints": 2}
    # Both runs in subprocesses with one thread: floating-point sums depend on the thread count.
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    uninterrupted = launch(tiny_overrides(reference, "rils", steps=STEPS, **extra), base_env)

    run = tmp_path / "killed"
    overrides = tiny_overrides(run, "rils", steps=STEPS, **extra)
    rng = np.random.default_rng(0)
    kills = in_save = 0
    while kills < KILLS:
        env = dict(base_env)
        if kills % 3 == 2:  # a third of the kills land inside a checkpoint write
            env[KILL_IN_SAVE_ENV] = str(int(rng.integers(1, 3)))
            proc = launch(overrides, env)
            proc.wait(timeout=120)
            in_save += proc.returncode == -signal.SIGKILL
        else:  # the others at a random step, from outside
            # log_every=1: each new line is one more step of this process; kill after 1 to 14
            before, steps = logged_lines(run), int(rng.integers(1, 15))
            proc = launch(overrides, env)
            while proc.poll() is None and logged_lines(run) < before + steps:
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        kills += 1
        assert not [p for p in run.glob("checkpoint-*.pt") if p.name.startswith(".")]
    assert in_save >= 2, "the fault hook never fired inside a checkpoint write"

    for proc in (launch(overrides, base_env), uninterrupted):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert not list(run.glob(".checkpoint-*.tmp-*"))  # temporaries of killed writes are cleaned up
    a = load_checkpoint(list_checkpoints(reference)[-1])
    b = load_checkpoint(list_checkpoints(run)[-1])
    assert a["step"] == b["step"] == STEPS
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_writes_a_checkpoint_at_that_step_and_resumes_exactly(tmp_path, monkeypatch, capsys, signum):
    from langmim.config import load_config
    from langmim.engine.interrupt import StoppedBySignal
    from langmim.engine.loop import Trainer, pretrain

    extra = {"train.ckpt_every": 100}  # no scheduled checkpoint before the end
    pretrain(load_config(None, tiny_overrides(tmp_path / "full", "rils", steps=8, **extra)), log_tensorboard=False)
    original_step, calls = Trainer.step, []

    def step_then_signal(self, batch):
        figures = original_step(self, batch)
        calls.append(1)
        if len(calls) == 3:  # arrives mid-run, as a cluster's SIGTERM or a Ctrl-C does
            os.kill(os.getpid(), signum)
        return figures

    monkeypatch.setattr(Trainer, "step", step_then_signal)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cfg = load_config(None, tiny_overrides(tmp_path / "stopped", "rils", steps=8, **extra))
    with pytest.raises(StoppedBySignal, match="after step 3"):
        pretrain(cfg, log_tensorboard=False)
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["checkpoint-00000003.pt"]
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # handlers restored
    monkeypatch.setattr(Trainer, "step", original_step)
    pretrain(cfg, resume="latest", log_tensorboard=False)
    assert "resumed from" in capsys.readouterr().out
    full = load_checkpoint(tmp_path / "full" / "checkpoint-00000008.pt")["model"]
    resumed = load_checkpoint(tmp_path / "stopped" / "checkpoint-00000008.pt")["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_latest_says_when_it_starts_fresh(tmp_path, capsys):
    from langmim.config import load_config
    from langmim.engine.loop import pretrain

    pretrain(load_config(None, tiny_overrides(tmp_path, "mae", steps=1)), resume="latest", log_tensorboard=False)
    assert "no checkpoint in" in capsys.readouterr().out


def test_a_live_runs_directory_is_refused_and_a_dead_runs_directory_resumes(tmp_path, capsys):
    """A second `langmim pretrain` on a directory another live process holds ends with one line
    naming that process and its host; once the holder is SIGKILLed, the directory resumes."""
    import socket

    from langmim.cli import main

    run = tmp_path / "run"
    run.mkdir()
    code = (f"import time; from pathlib import Path; from langmim.engine.run_lock import RunLock; "
            f"lock = RunLock.acquire(Path({str(run)!r})); lock.claim(); print('locked', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        overrides = tiny_overrides(run, "clip", steps=2)
        assert main(["pretrain", "--no-tensorboard", *overrides]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by the run of process {holder.pid} on {socket.gethostname()}" in err[0], err
        assert not list_checkpoints(run)
    finally:
        holder.kill()
        holder.wait()
    assert main(["pretrain", "--no-tensorboard", "--resume", "latest", *overrides]) == 0  # the dead run's lock went with it
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000002.pt"]


@pytest.mark.parametrize("checkpoint_format, suffix", [("file", "pt"), ("sharded", "dcp")])
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, checkpoint_format, suffix):
    """On a tmpfs with room for one checkpoint, the second write fails: one line names the path and
    the free space (measured once the temporary file is gone), no temporary file (or folder) is
    left, the earlier checkpoint is not pruned, and `--resume latest` would take it."""
    import re
    import shutil

    from langmim.cli import main
    from langmim.engine.checkpoint import find_resume_state

    probe = tmp_path / "probe"
    assert main(["pretrain", "--no-tensorboard", *tiny_overrides(probe, "clip", steps=2)]) == 0
    size = (probe / "checkpoint-00000002.pt").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5) // 4096 * 4096}", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the test needs root")
    try:
        run = disk / "run"
        overrides = [*tiny_overrides(run, "clip", steps=4), "train.ckpt_every=2", "train.keep_checkpoints=1",
                     f"train.checkpoint_format={checkpoint_format}"]
        assert main(["pretrain", "--no-tensorboard", *overrides]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
        assert f"could not write '{run / f'checkpoint-00000004.{suffix}'}'" in err and "MB free there" in err and "Traceback" not in err, err
        reported = float(re.search(r"; ([0-9.]+) MB free there", err).group(1))
        assert abs(reported - shutil.disk_usage(disk).free / 1e6) < 0.2, (reported, shutil.disk_usage(disk).free)
        assert sorted(p.name for p in run.iterdir() if p.name.startswith((".checkpoint", "checkpoint"))) == [
            f"checkpoint-00000002.{suffix}", *([f"checkpoint-00000002.{suffix}.digest"] if suffix == "pt" else [])]
        assert find_resume_state("latest", run)[0] == run / f"checkpoint-00000002.{suffix}"
        assert load_checkpoint(run / f"checkpoint-00000002.{suffix}")["step"] == 2
    finally:
        subprocess.run(["umount", str(disk)], check=True)
