"""Nothing corrupt is kept or trusted: a diverged run saves only finite checkpoints, checkpoints
carry a digest that every load verifies, links planted in a run directory are never written
through, and a torn or failed metrics log neither stops a later run nor confuses its readers."""
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from conftest import tiny_overrides
from langmim.cli import main
from langmim.io import atomic_save, digest_path, list_checkpoints, load_checkpoint, non_finite_values


def pretrain_cli(*args: str) -> int:
    return main(["pretrain", "--no-tensorboard", *args])


def last_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("langmim:")]
    assert err, "no error line"
    return err[-1]


def test_a_diverging_run_keeps_only_finite_checkpoints_and_resumes_from_the_newest(tmp_path, capsys):
    """lr=1e4 with a checkpoint every step: the update of a step with a finite loss already
    overflows the weights; that state is never saved, the line names the newest finite
    checkpoint, and `--resume latest` starts from it."""
    run = tmp_path / "run"
    overrides = tiny_overrides(run, "clip", steps=20, **{"train.lr": 1e4, "train.warmup_steps": 1, "train.ckpt_every": 1,
                                                          "train.keep_checkpoints": 50})
    assert pretrain_cli(*overrides) == 2
    err = last_error(capsys)
    kept = list_checkpoints(run)
    assert kept, "the run diverged before its first checkpoint; the test needs one"
    for path in kept:
        state = torch.load(path, weights_only=True)
        assert non_finite_values({"m": state["model"], "o": state["optimizer"]["state"]})[0] == 0, path
    assert "non-finite" in err and f"the newest finite checkpoint is '{kept[-1]}'" in err, err

    assert pretrain_cli("--resume", "latest", *overrides) == 2
    out = capsys.readouterr().out
    assert f"resumed from '{kept[-1]}'" in out
    assert list_checkpoints(run) == kept


def test_a_run_diverging_before_any_checkpoint_says_there_is_none(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = tiny_overrides(run, "clip", steps=20, **{"train.lr": 1e30, "train.warmup_steps": 1, "train.ckpt_every": 10})
    assert pretrain_cli(*overrides) == 2
    assert f"no checkpoint was written to '{run}'" in last_error(capsys)
    assert not list_checkpoints(run)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny CLIP run of 4 steps with checkpoints at 2 and 4."""
    run = tmp_path_factory.mktemp("finished") / "run"
    overrides = tiny_overrides(run, "clip", steps=4, **{"train.ckpt_every": 2, "train.keep_checkpoints": 2})
    assert pretrain_cli(*overrides) == 0
    return run, overrides


def copy_run(finished_run, tmp_path):
    source, overrides = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run, symlinks=True)
    return run, [o.replace(str(source), str(run)) for o in overrides]


def test_non_finite_weights_are_refused_by_export_and_eval(finished_run, tmp_path, capsys):
    run, _ = copy_run(finished_run, tmp_path)
    path = list_checkpoints(run)[-1]
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[:7] = float("nan")
    atomic_save(state, path, digest=True)  # a digest that matches: only the finite check can refuse it
    for command in (["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")],
                    ["eval", "--checkpoint", str(run), "--tasks", "knn"]):
        assert main(command) == 2
        err = last_error(capsys)
        assert f"'{path}' holds 7 non-finite values" in err and name in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_non_finite_weights_in_a_safetensors_export_are_refused(finished_run, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run, _ = copy_run(finished_run, tmp_path)
    export = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(export)]) == 0
    with safe_open(str(export), "pt") as f:
        metadata = f.metadata()
    weights = load_file(str(export))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name].view(-1)[0] = float("inf")
    save_file(weights, str(export), metadata=metadata)
    assert main(["eval", "--checkpoint", str(export), "--tasks", "knn"]) == 2
    assert f"weights '{export}' holds 1 non-finite values" in last_error(capsys)


def overwrite_middle(path, size=4096):
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * size)


@pytest.mark.parametrize("damage", ["bit rot", "truncation"])
def test_resume_latest_skips_a_damaged_newest_checkpoint_with_one_line(finished_run, tmp_path, capsys, damage):
    run, overrides = copy_run(finished_run, tmp_path)
    newest = run / "checkpoint-00000004.pt"
    if damage == "bit rot":
        overwrite_middle(newest)
    else:
        os.truncate(newest, newest.stat().st_size // 3)
    from langmim.engine.checkpoint import find_resume_state

    path, state = find_resume_state("latest", run)
    out = capsys.readouterr().out.splitlines()
    assert path == run / "checkpoint-00000002.pt" and state["step"] == 2
    skipped = [line for line in out if line.startswith("skipped checkpoint-00000004.pt")]
    assert len(skipped) == 1 and ("fails its digest" if damage == "bit rot" else "truncated") in skipped[0], out
    assert pretrain_cli("--resume", "latest", *overrides) == 0  # trains steps 3 and 4 again, from step 2
    assert load_checkpoint(newest)["step"] == 4


def test_every_reader_refuses_a_checkpoint_that_fails_its_digest(finished_run, tmp_path, capsys):
    run, _ = copy_run(finished_run, tmp_path)
    newest = list_checkpoints(run)[-1]
    overwrite_middle(newest, 64)
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "timm")]) == 2
    assert f"'{newest}' fails its digest" in last_error(capsys)


def test_a_checkpoint_without_a_digest_still_loads_and_says_so_once(finished_run, tmp_path, capsys):
    run, _ = copy_run(finished_run, tmp_path)
    for path in list_checkpoints(run):
        digest_path(path).unlink()
    for path in list_checkpoints(run):
        assert load_checkpoint(path)["format"] == "langmim"
    notes = [line for line in capsys.readouterr().out.splitlines() if "has no digest" in line]
    assert len(notes) == 1, notes


def test_a_damaged_sharded_checkpoint_is_skipped(tmp_path, capsys):
    from langmim.engine.checkpoint import find_resume_state

    run = tmp_path / "run"
    overrides = tiny_overrides(run, "clip", steps=4, **{"train.ckpt_every": 2, "train.keep_checkpoints": 2,
                                                         "train.checkpoint_format": "sharded"})
    assert pretrain_cli(*overrides) == 0
    shard = next((run / "checkpoint-00000004.dcp").glob("*.distcp"))
    overwrite_middle(shard, 64)
    path, _ = find_resume_state("latest", run)
    assert path == run / "checkpoint-00000002.dcp"
    assert f"'{shard.name}' fails its digest" in capsys.readouterr().out


@pytest.mark.parametrize("name", [".langmim.lock", "metrics.jsonl"])
def test_links_planted_in_a_run_directory_are_refused_and_their_targets_unchanged(finished_run, tmp_path, capsys, name):
    run, overrides = copy_run(finished_run, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(target)
    assert pretrain_cli("--resume", "latest", *overrides) == 2
    err = last_error(capsys)
    assert f"'{run / name}' is a symbolic link" in err, err
    assert target.read_text() == "do not touch\n"


def test_config_yaml_link_is_replaced_not_followed(finished_run, tmp_path):
    run, overrides = copy_run(finished_run, tmp_path)
    target = tmp_path / "precious.yaml"
    target.write_text("keep: me\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(target)
    assert pretrain_cli("--resume", "latest", *overrides) == 0
    assert target.read_text() == "keep: me\n" and not (run / "config.yaml").is_symlink()


def test_a_torn_log_line_is_set_aside_and_a_resume_logs_no_step_twice(finished_run, tmp_path, capsys):
    """A run killed mid-line and after logging past its last checkpoint: the next run sets the torn
    line aside, drops the records it is about to log again, and every line it leaves is JSON."""
    run, overrides = copy_run(finished_run, tmp_path)
    (run / "checkpoint-00000004.pt").unlink()  # as if killed after logging step 4, before its checkpoint
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "loss": 1.2')  # and torn in the middle of a line
    assert pretrain_cli("--resume", "latest", *overrides) == 0
    out = capsys.readouterr().out
    assert "set aside 1 torn line(s) into metrics.jsonl.torn" in out
    assert "dropped 2 record(s) logged after step 2" in out
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (run / "metrics.jsonl.torn").read_text() == '{"step": 5, "loss": 1.2\n'


def test_readers_skip_a_torn_log_line_with_a_warning(finished_run, tmp_path):
    from langmim.files import read_jsonl

    run, _ = copy_run(finished_run, tmp_path)
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "lo')
    with pytest.warns(UserWarning, match="line 5 is not a JSON record"):
        records = read_jsonl(log)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    with pytest.warns(UserWarning):
        assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0  # its model card reads the log


def fill(folder, leave_pages: int) -> None:
    """Fill ``folder``'s file system, then free ``leave_pages`` pages of 4 KiB."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - size % 4096 - leave_pages * 4096))


def test_a_full_disk_during_a_log_write_stops_with_one_line_and_leaves_an_exportable_run(finished_run, tmp_path, capsys):
    """A resumed run on a tmpfs with one page left (config.yaml's rewrite frees as much as it
    takes): the log fills that page and fails on the next; one line names the log and the free
    space, the final checkpoint cannot be written either, and the run exports from its last one."""
    source, overrides = finished_run
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the test needs root")
    try:
        run = disk / "run"
        overrides = [o.replace(str(source), str(run)) for o in overrides if not o.startswith(("train.steps=", "train.ckpt_every="))]
        overrides += ["train.steps=60", "train.ckpt_every=60"]  # no checkpoint before the log fills its page (about 20 lines)
        assert pretrain_cli("--stop-after", "2", *overrides) == 0
        log = run / "metrics.jsonl"
        records = log.read_text().splitlines()  # pad the log to a whole page: its next line needs a new one
        padded = json.dumps({**json.loads(records[-1]), "pad": ""})
        pad = 4096 - (sum(len(r) + 1 for r in records[:-1]) + len(padded) + 1) % 4096
        log.write_text("\n".join([*records[:-1], json.dumps({**json.loads(records[-1]), "pad": "x" * pad})]) + "\n")
        assert log.stat().st_size % 4096 == 0
        fill(disk, leave_pages=1)
        assert pretrain_cli("--resume", "latest", *overrides) == 2
        err = last_error(capsys)
        assert re.search(rf"could not write '{re.escape(str(log))}' \(No space left on device\); [0-9.]+ MB free there; "
                         r"no checkpoint of step \d+ could be written either", err), err
        (disk / "filler").unlink()
        assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")]) == 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)
