"""Config errors, CLI help, and bad input ending in one clear line with exit code 2."""

import pytest
import torch
import yaml

from conftest import tiny_overrides
from langmim.cli import build_parser, main
from langmim.config import config_differences, load_config, to_dict
from langmim.errors import ConfigError


def test_presets_and_overrides_resolve():
    cfg = load_config("demo", ["train.steps=7", "method=clip", "train.betas=[0.9,0.95]"])
    assert cfg.train.steps == 7 and cfg.method == "clip" and cfg.train.betas == [0.9, 0.95]
    assert cfg.model.width == 128 and cfg.model.img_size == 64  # filled from model.arch=demo


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1", ["train.lrr", "lr", "steps"]),
    ("nosuch=1", ["nosuch", "method"]),
    ("train.steps=abc", ["train.steps", "int", "abc"]),
    ("train.steps=1.5", ["train.steps", "int"]),
    ("model.arch=huge", ["model.arch", "demo"]),
    ("data.augment=maybe", ["data.augment", "true or false"]),
    ("train", ["key=value"]),
    ("train.batch_size=10", ["batch_size"]),  # not divisible by accum_freq below
])
def test_config_errors_name_the_key(override, words):
    extra = ["train.accum_freq=4"] if override == "train.batch_size=10" else []
    with pytest.raises(ConfigError) as err:
        load_config(None, [override, *extra])
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("train.lr=nan", "config key 'train.lr' must be in (0, inf); got nan"),
    ("train.lr=0", "config key 'train.lr' must be in (0, inf); got 0.0"),
    ("train.lr=-1", "config key 'train.lr' must be in (0, inf); got -1.0"),
    ("train.min_lr=-1e-6", "config key 'train.min_lr' must be in [0, inf); got -1e-06"),
    ("train.betas=[1.5,2]", "config key 'train.betas' must be in [0, 1); got 1.5"),
    ("train.betas=[0.9,1]", "config key 'train.betas' must be in [0, 1); got 1.0"),
    ("train.eps=0", "config key 'train.eps' must be in (0, inf); got 0.0"),
    ("train.weight_decay=-0.1", "config key 'train.weight_decay' must be in [0, inf); got -0.1"),
    ("train.grad_clip=-1", "config key 'train.grad_clip' must be in [0, inf); got -1.0"),
    ("train.warmup_steps=-1", "config key 'train.warmup_steps' must be in [0, inf); got -1"),
    ("train.steps=0", "config key 'train.steps' must be in [1, inf); got 0"),
    ("train.batch_size=-16", "config key 'train.batch_size' must be in [1, inf); got -16"),
])
def test_train_values_out_of_range_are_refused_as_they_are_read(override, words, tmp_path):
    """Before torch is imported or a run directory made, on the command line and in a file."""
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == words
    key, value = override.split("=")
    section, name = key.split(".")
    (tmp_path / "mine.yaml").write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "mine.yaml"))
    assert str(err.value) == f"{tmp_path / 'mine.yaml'}: {words}"


def test_yaml_file_with_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="mine.yaml.*train.stepz"):
        load_config(str(path))


def test_resume_allow_list():
    a = to_dict(load_config(None, ["train.steps=10"]))
    b = to_dict(load_config(None, ["train.steps=20", "train.log_every=3"]))
    c = to_dict(load_config(None, ["train.lr=0.5"]))
    assert config_differences(a, b) == []
    assert config_differences(a, c) == ["train.lr"]


def test_every_subcommand_documents_every_option():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices
    assert set(subparsers) >= {"pretrain", "eval", "demo"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help text"


def _run(capsys, *argv):
    capsys.readouterr()  # drop what earlier calls printed
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_unknown_key_exit_2(capsys, tmp_path):
    code, err = _run(capsys, "pretrain", "--config", "demo", "train.lrr=1", f"output_dir={tmp_path}/x")
    assert code == 2 and len(err) == 1 and "train.lrr" in err[0]
    assert not (tmp_path / "x").exists()


def test_cli_missing_data_path_exit_2(capsys, tmp_path):
    code, err = _run(capsys, "pretrain", *tiny_overrides(tmp_path / "run", "mae"), f"data.root={tmp_path}/nowhere")
    assert code == 2 and "nowhere" in err[-1]


def test_cli_empty_data_path_exit_2(capsys, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "pretrain", *tiny_overrides(tmp_path / "run", "mae"), f"data.root={tmp_path}/empty")
    assert code == 2 and "empty" in err[-1]


def test_cli_unwritable_run_dir_exit_2(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = _run(capsys, "pretrain", *tiny_overrides(blocker / "run", "mae"))
    assert code == 2 and "not writable" in err[-1]
    assert blocker.read_text() == "not a directory"


def test_cli_refuses_to_overwrite_a_run(capsys, tmp_path):
    args = ["pretrain", "--no-tensorboard", *tiny_overrides(tmp_path, "mae", steps=1)]
    assert main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    code, err = _run(capsys, *args)
    assert code == 2 and "--resume latest" in err[-1]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("kind", ["truncated", "foreign"])  # weights carrying code: test_weight_safety.py
def test_cli_bad_resume_checkpoint_exit_2(capsys, tmp_path, kind):
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        run = tmp_path / "good"
        assert main(["pretrain", "--no-tensorboard", *tiny_overrides(run, "mae", steps=1)]) == 0
        data = next(run.glob("checkpoint-*.pt")).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    out = tmp_path / "resumed"
    code, err = _run(capsys, "pretrain", "--resume", str(bad), *tiny_overrides(out, "mae", steps=2))
    assert code == 2 and len(err) == 1 and "bad.pt" in err[0]
    assert not list(out.glob("checkpoint-*.pt"))


def test_cli_resume_with_changed_config_is_refused(capsys, tmp_path):
    assert main(["pretrain", "--no-tensorboard", *tiny_overrides(tmp_path, "mae", steps=1)]) == 0
    code, err = _run(capsys, "pretrain", "--resume", "latest", *tiny_overrides(tmp_path, "mae", steps=2), "train.lr=0.1")
    assert code == 2 and "train.lr" in err[-1]


def test_saved_configs_with_renamed_keys_still_load():
    from langmim.config import config_from_dict, to_dict

    saved = to_dict(load_config("demo", []))
    del saved["eval"]["scene_train_size"], saved["eval"]["scene_test_size"]
    saved["eval"].update(segmentation_train_size=123, segmentation_test_size=45)  # the names runs were saved with
    cfg = config_from_dict(saved)
    assert (cfg.eval.scene_train_size, cfg.eval.scene_test_size) == (123, 45)


def old_format(saved: dict) -> dict:
    """A config as runs saved it before each method owned its section: every method's settings
    under ``loss``, ``teacher`` and ``model.decoder_*``, whichever method trained."""
    old = {k: v for k, v in saved.items() if k != saved["method"]}
    own = dict(saved.get(saved["method"], {}))
    teacher = own.pop("teacher", {})
    old["loss"] = {"mask_ratio": own.get("mask_ratio", 0.75), "norm_pix_loss": own.get("norm_pix_loss", True),
                   "rec_weight": own.get("rec_weight", 0.5), "student_temperature": own.get("prediction_temperature", 0.1),
                   "teacher_temperature": own.get("target_temperature", 0.04), "masking": own.get("masking", "semantic")}
    old["teacher"] = {"source": teacher.get("source"), "importance": teacher.get("importance", "attention"),
                      "embed_dim": teacher.get("embed_dim")}
    old["model"] = {**saved["model"], "decoder_width": own.get("decoder_width", 32), "decoder_depth": own.get("decoder_depth", 1),
                    "decoder_heads": own.get("decoder_heads", 2), "decoder_type": own.get("decoder_type", "prompting")}
    return old


@pytest.mark.parametrize("method, own", [("milan", ["milan.masking=random", "milan.teacher.importance=similarity"]),
                                         ("rils", ["rils.target_temperature=0.05"])])
def test_a_run_saved_with_the_old_keys_resumes_and_evaluates(method, own, tmp_path, capsys, clip_run):
    """A run directory written before the methods owned their sections (its config.yaml and its
    checkpoint's config in the old keys) resumes from its saved config and evaluates, its
    settings read into the method's own section."""
    from langmim.api import load
    from langmim.eval.suite import evaluate
    from langmim.io import atomic_save, checkpoint_path, load_checkpoint

    run = tmp_path / method
    teacher = [f"milan.teacher.source=langmim:{clip_run}"] if method == "milan" else []
    tiny = [o for o in tiny_overrides(run, method, steps=3) if not o.startswith("train.ckpt_every")]
    assert main(["pretrain", *tiny, *teacher, *own, "--no-tensorboard", "--stop-after", "2"]) == 0
    new = load_config(None, [*tiny, *teacher, *own]).settings
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(old_format(saved), sort_keys=False))
    state = load_checkpoint(checkpoint_path(run, 2))
    state["config"] = old_format(state["config"])
    atomic_save(state, checkpoint_path(run, 2))
    assert "loss" in yaml.safe_load((run / "config.yaml").read_text()) and method not in state["config"]

    assert main(["pretrain", "--config", str(run / "config.yaml"), "--resume", "latest", "--no-tensorboard"]) == 0
    assert f"resumed from '{checkpoint_path(run, 2)}' at step 2 of 3" in capsys.readouterr().out
    model = load(run)
    assert model.step == 3 and type(model.settings) is type(new)
    assert all(getattr(model.settings, k) == getattr(new, k) for k in ("mask_ratio", "masking", "target_temperature") if hasattr(new, k))
    if method == "milan":
        assert model.settings.teacher.importance == "similarity" and model.settings.teacher.embed_dim == 32
    result = evaluate(model, ["knn"], model.config.eval, tmp_path / "results", method, log=lambda _: None)["knn"]
    assert 0.0 <= result["metrics"]["top1"] <= 100.0


@pytest.mark.parametrize("overrides, words", [
    (["method=rils", "mae.norm_pix_loss=false"], ["'mae.norm_pix_loss' is a setting of method mae", "rils.target_temperature"]),
    (["method=rils", "loss.norm_pix_loss=false"], ["'loss.norm_pix_loss' is now a method's own setting (mae.norm_pix_loss)"]),
    (["method=clip", "model.decoder_width=64"], ["(mae.decoder_width or milan.decoder_width)", "method clip's own settings are clip.contrastive_loss"]),
    (["method=clip", "clip.contrastive_loss=hinge"], ["clip.contrastive_loss", "softmax, sigmoid"]),
    (["method=milan", "milan.teacher.importance=cls"], ["milan.teacher.importance", "attention, similarity"]),
    (["method=mae", "mae.mask_ratio=1"], ["mae.mask_ratio must be in [0, 1)"]),
])
def test_a_key_of_another_methods_section_names_that_section(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_old_keys_on_the_command_line_read_as_the_methods_own():
    cfg = load_config(None, ["method=rils", "loss.teacher_temperature=0.07", "loss.mask_ratio=0.5"])
    assert (cfg.settings.target_temperature, cfg.settings.mask_ratio) == (0.07, 0.5)
    cfg = load_config(None, ["teacher.source=langmim:runs/x", "model.decoder_type=mae", "method=milan"])  # order does not matter
    assert (cfg.settings.teacher.source, cfg.settings.decoder_type) == ("langmim:runs/x", "mae")
    assert load_config("milan_demo", []).settings.decoder_width == 128  # unset decoder sizes come from model.arch
    with pytest.raises(ConfigError, match="preset 'milan_demo': config key 'milan.teacher.source' is a setting of method milan"):
        load_config("milan_demo", ["method=mae"])  # a preset's section of another method is refused too


def test_readme_resume_example_continues_with_the_saved_config(tmp_path, capsys):
    """README and docs/usage.md: `pretrain --config demo method=clip ... output_dir=runs/clip`, then
    `pretrain --config runs/clip/config.yaml --resume latest`; options may follow overrides."""
    run = tmp_path / "clip"
    tiny = [o for o in tiny_overrides(run, "clip", steps=3) if not o.startswith("train.ckpt_every")]
    assert main(["pretrain", "--config", "demo", *tiny, "--no-tensorboard", "--stop-after", "2"]) == 0
    assert main(["pretrain", "--config", str(run / "config.yaml"), "--resume", "latest", "--no-tensorboard"]) == 0
    assert f"resumed from '{run / 'checkpoint-00000002.pt'}' at step 2 of 3" in capsys.readouterr().out
    assert (run / "checkpoint-00000003.pt").is_file()


def bad_checkpoints(folder):
    """A file of each wrong kind, and the words its refusal must hold."""
    import io

    from PIL import Image

    folder.mkdir()
    (folder / "notes.pt").write_text("step 100: loss 3.2\n")
    (folder / "noise.pt").write_bytes(bytes(range(7, 256)) * 20)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    (folder / "picture.pt").write_bytes(buffer.getvalue())
    torch.save({"format": "langmim", "model": {"w": torch.zeros(4096)}}, folder / "whole.pt")
    whole = (folder / "whole.pt").read_bytes()
    (folder / "cut.pt").write_bytes(whole[: len(whole) // 2])
    return {"notes.pt": "looks like a text file", "noise.pt": "looks like unrecognised bytes",
            "picture.pt": "looks like a PNG image", "cut.pt": "is truncated"}  # code: test_weight_safety.py


@pytest.mark.parametrize("command", ["eval", "export", "resume", "init.vision"])
def test_every_checkpoint_reader_says_what_a_bad_file_is(tmp_path, capsys, command):
    cases = bad_checkpoints(tmp_path / "files")
    for name, words in cases.items():
        path = str(tmp_path / "files" / name)
        argv = {
            "eval": ["eval", "--checkpoint", path],
            "export": ["export", path, "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")],
            "resume": ["pretrain", "--resume", path, f"output_dir={tmp_path / 'run'}", "train.steps=1"],
            "init.vision": ["pretrain", "method=mae", f"init.vision={path}", f"output_dir={tmp_path / name}", "train.steps=1"],
        }[command]
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and name in err, err
        assert "weights_only=False" not in err and "Traceback" not in err


METHOD_RULE_MISTAKES = {  # a method-rule mistake on the command line, and the words of its one-line refusal
    "method=mae init.lock_text=true": "init.text and init.lock_text need a text tower; method mae has none",
    "method=rils init.lock_vision=true": "init.lock_vision freezes the encoder that method rils trains",
    "method=milan train.fsdp=true": "train.fsdp is not supported for MILAN",
    "method=supervised data.name=csv data.root=x.csv": "method supervised trains on fashion-scenes' ground truth",
    "method=supervised model.patch_size=6 model.img_size=60": "model.patch_size=6 must be a multiple of 4",
    "method=rils mae.norm_pix_loss=false": "'mae.norm_pix_loss' is a setting of method mae",
}


def test_help_and_config_errors_start_without_torch():
    """`langmim --help`, a config mistake and every method-rule mistake answer with exit code 2
    before torch, open_clip or timm are imported."""
    import subprocess
    import sys

    mistakes = [["pretrain", "train.lrr=1"], ["pretrain", "method=byol"]] + [["pretrain", *m.split()] for m in METHOD_RULE_MISTAKES]
    code = ("import sys; from langmim.cli import build_parser, main; build_parser(); "
            f"print([main(argv) for argv in {mistakes!r}], sorted(m for m in ('torch', 'open_clip', 'timm', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"{[2] * len(mistakes)} []", result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(mistakes) and "unknown config key 'train.lrr'" in errors[0]
    assert "config key 'method' must be one of mae, clip, siglip, flip, slip, rils, milan, supervised; got 'byol'" in errors[1]  # the method registry's names
    assert all(words in line for words, line in zip(METHOD_RULE_MISTAKES.values(), errors[2:])), errors


def test_configs_saved_before_a_key_existed_load_with_what_those_runs_did():
    """Runs saved before train.no_weight_decay existed spared cls_token, mask_token and the text
    positions from weight decay; their configs load that way, so their optimizer state fits."""
    from langmim.config import config_from_dict

    saved = to_dict(load_config("demo"))
    del saved["train"]["no_weight_decay"]
    assert config_from_dict(saved).train.no_weight_decay == ["cls_token", "mask_token", "positional_embedding"]
    saved["train"]["no_weight_decay"] = []
    assert config_from_dict(saved).train.no_weight_decay == []


def test_report_over_result_files_starts_without_torch(tmp_path):
    """`langmim report` reads result JSONs and draws: neither torch nor the model libraries load."""
    import json
    import subprocess
    import sys

    results = tmp_path / "run" / "results"
    results.mkdir(parents=True)
    metrics = {f"{d}_R@{k}": 10.0 * k for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    result = {"model": "run", "task": "retrieval", "step": 4, "config": {"method": "clip"}, "metrics": {**metrics, "top1": 10.0}}
    (results / "run_retrieval_fashion-scenes-captions.json").write_text(json.dumps(result))
    code = ("import sys; from langmim.cli import main; "
            f"rc = main(['report', {str(tmp_path / 'run')!r}, '--output', {str(tmp_path / 'report')!r}]); "
            "print(rc, sorted(m for m in ('torch', 'open_clip', 'timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert (tmp_path / "report" / "retrieval.png").is_file() and "retrieval R@1" in (tmp_path / "report" / "report.md").read_text()
