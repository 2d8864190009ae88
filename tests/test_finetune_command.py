"""``langmim finetune``: the presets against the releases, the lr of every parameter group against
MAE's closed form, the new keys of a loaded run, resume after SIGKILL, and two ranks against one."""
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL
from langmim.cli import main
from langmim.config import load_config

MAE = "facebookresearch/mae@efb2a80"
MILAN = "zejiangh/MILAN@7dcfe0f"
# (key, value, where the release sets it); FINETUNE.md's ViT-B command wins over main_finetune.py's defaults
MAE_RECIPE = [
    ("model.arch", "vit_b16", f"{MAE} FINETUNE.md l.69 --model vit_base_patch16"),
    ("model.img_size", 224, f"{MAE} main_finetune.py l.54 --input_size 224"),
    ("finetune.epochs", 100, f"{MAE} FINETUNE.md l.71"),
    ("finetune.batch_size", 1024, f"{MAE} FINETUNE.md l.77: 32 x 4 nodes x 8 GPUs"),
    ("finetune.accum_iter", 1, f"{MAE} main_finetune.py l.47"),
    ("finetune.lr", None, f"{MAE} main_finetune.py l.66 (from blr)"),
    ("finetune.blr", 5e-4, f"{MAE} FINETUNE.md l.72"),
    ("finetune.min_lr", 1e-6, f"{MAE} main_finetune.py l.73"),
    ("finetune.warmup_epochs", 5, f"{MAE} main_finetune.py l.76"),
    ("finetune.layer_decay", 0.65, f"{MAE} FINETUNE.md l.72"),
    ("finetune.weight_decay", 0.05, f"{MAE} FINETUNE.md l.73"),
    ("finetune.drop_path", 0.1, f"{MAE} FINETUNE.md l.73"),
    ("finetune.clip_grad", 0.0, f"{MAE} main_finetune.py l.61 (None)"),
    ("finetune.smoothing", 0.1, f"{MAE} main_finetune.py l.84"),
    ("finetune.mixup", 0.8, f"{MAE} FINETUNE.md l.73"),
    ("finetune.cutmix", 1.0, f"{MAE} FINETUNE.md l.73"),
    ("finetune.mixup_prob", 1.0, f"{MAE} main_finetune.py l.104"),
    ("finetune.mixup_switch_prob", 0.5, f"{MAE} main_finetune.py l.106"),
    ("finetune.mixup_mode", "batch", f"{MAE} main_finetune.py l.108"),
    ("finetune.aa", "rand-m9-mstd0.5-inc1", f"{MAE} main_finetune.py l.82"),
    ("finetune.color_jitter", None, f"{MAE} main_finetune.py l.80"),
    ("finetune.reprob", 0.25, f"{MAE} FINETUNE.md l.73"),
    ("finetune.remode", "pixel", f"{MAE} main_finetune.py l.90"),
    ("finetune.recount", 1, f"{MAE} main_finetune.py l.92"),
    ("finetune.global_pool", "avg", f"{MAE} main_finetune.py l.114-115"),
    ("finetune.head_init_std", 2e-5, f"{MAE} main_finetune.py l.257"),
    ("finetune.crop_pct", 224 / 256, f"{MAE} util/datasets.py l.53-57"),
    ("finetune.seed", 0, f"{MAE} main_finetune.py l.131"),
    ("finetune.dataset", "imagefolder", f"{MAE} util/datasets.py l.20-24"),
]
MILAN_RECIPE = [
    ("model.arch", "vit_b16", f"{MILAN} FINETUNE.sh l.7"),
    ("model.img_size", 224, f"{MILAN} main_finetune.py l.47"),
    ("finetune.epochs", 100, f"{MILAN} FINETUNE.sh l.9"),
    ("finetune.batch_size", 1024, f"{MILAN} FINETUNE.sh l.4-6: 8 GPUs x 128 x accum 1"),
    ("finetune.accum_iter", 1, f"{MILAN} FINETUNE.sh l.5"),
    ("finetune.lr", None, f"{MILAN} main_finetune.py l.59 (from blr)"),
    ("finetune.blr", 1e-4, f"{MILAN} FINETUNE.sh l.10"),
    ("finetune.min_lr", 1e-6, f"{MILAN} main_finetune.py l.66"),
    ("finetune.warmup_epochs", 5, f"{MILAN} main_finetune.py l.69"),
    ("finetune.layer_decay", 0.65, f"{MILAN} FINETUNE.sh l.10"),
    ("finetune.weight_decay", 0.05, f"{MILAN} FINETUNE.sh l.11"),
    ("finetune.drop_path", 0.1, f"{MILAN} FINETUNE.sh l.11"),
    ("finetune.clip_grad", 0.0, f"{MILAN} main_finetune.py l.54 (None)"),
    ("finetune.smoothing", 0.1, f"{MILAN} main_finetune.py l.77"),
    ("finetune.mixup", 0.8, f"{MILAN} FINETUNE.sh l.11"),
    ("finetune.cutmix", 1.0, f"{MILAN} FINETUNE.sh l.11"),
    ("finetune.mixup_prob", 1.0, f"{MILAN} main_finetune.py l.97"),
    ("finetune.mixup_switch_prob", 0.5, f"{MILAN} main_finetune.py l.99"),
    ("finetune.mixup_mode", "batch", f"{MILAN} main_finetune.py l.101"),
    ("finetune.aa", "rand-m9-mstd0.5-inc1", f"{MILAN} main_finetune.py l.75"),
    ("finetune.color_jitter", None, f"{MILAN} main_finetune.py l.73"),
    ("finetune.reprob", 0.25, f"{MILAN} FINETUNE.sh l.11"),
    ("finetune.remode", "pixel", f"{MILAN} main_finetune.py l.83"),
    ("finetune.recount", 1, f"{MILAN} main_finetune.py l.85"),
    ("finetune.global_pool", "avg", f"{MILAN} FINETUNE.sh l.14 --global_pool"),
    ("finetune.head_init_std", 0.02, f"{MILAN} main_finetune.py l.271-272 commented out; models_vit.py l.251-255"),
    ("finetune.crop_pct", 224 / 256, f"{MILAN} util/datasets.py l.53-57"),
    ("finetune.seed", 0, f"{MILAN} main_finetune.py l.127"),
    ("finetune.dataset", "imagefolder", f"{MILAN} util/datasets.py"),
]


def value(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("preset, recipe", [("mae_finetune_vit_b16", MAE_RECIPE), ("milan_finetune_vit_b16", MILAN_RECIPE)])
def test_presets_equal_the_releases(preset, recipe):
    cfg = load_config(preset, folder="finetune")
    for key, expected, source in recipe:
        assert value(cfg, key) == expected, f"{preset}: {key} is {value(cfg, key)!r}, {source} sets {expected!r}"
    covered = {key.split(".", 1)[1] for key, _, _ in recipe if key.startswith("finetune.")}
    assert covered >= {f for f in vars(cfg.finetune)} - {"pretrained", "data_root", "train_size", "val_size"}


def test_dry_run_prints_the_recipe_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--config", "mae_finetune_vit_b16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr 0.002 = blr 0.0005 x batch 1024 / 256" in out
    assert "new keys: fc_norm.bias, fc_norm.weight, head.bias, head.weight" in out
    assert "RandAugment rand-m9-mstd0.5-inc1 + RandomErasing(p=0.25, mode=pixel, count=1)" in out
    assert "mixup 0.8, cutmix 1 (prob 1, switch 0.5, mode batch)" in out
    assert "resize 256 (224 / crop_pct 0.875, bicubic), centre crop 224" in out
    assert "dry run ok" in out and not list(tmp_path.iterdir())


def mae_layer_id(name: str, num_layers: int) -> int:
    """util/lr_decay.py get_layer_id_for_vit, on MAE's names (ours without the ``visual.`` prefix)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def test_every_group_follows_maes_closed_form():
    from langmim.finetune.train import build_classifier, build_optimizer
    from langmim.methods import build_method

    overrides = TINY_MODEL + ["method=mae", "model.depth=3", "finetune.blr=1e-3", "finetune.batch_size=64", "finetune.epochs=10",
                              "finetune.warmup_epochs=2", "finetune.min_lr=1e-5", "finetune.layer_decay=0.65"]
    cfg = load_config(None, overrides)
    classifier = build_classifier(cfg, build_method(cfg), 5)
    steps_per_epoch = 5
    optimizer, scheduler = build_optimizer(cfg, classifier, steps_per_epoch)
    names = {id(p): n.removeprefix("visual.") for n, p in classifier.named_parameters()}
    peak, num_layers = 1e-3 * 64 / 256, 3 + 1
    checks = {0: "start", 5: "mid warm-up", 10: "end of warm-up", 30: "mid cosine", 49: "last"}
    for step in range(50):
        epoch = step / steps_per_epoch
        if epoch < 2:
            lr = peak * epoch / 2
        else:
            lr = 1e-5 + (peak - 1e-5) * 0.5 * (1 + math.cos(math.pi * (epoch - 2) / 8))
        if step in checks:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    name = names[id(param)]
                    scale = 0.65 ** (num_layers - mae_layer_id(name, num_layers))
                    assert group["lr"] == pytest.approx(lr * scale, rel=1e-12, abs=1e-18), (checks[step], name)
                    decays = param.ndim > 1 and name not in ("cls_token", "pos_embed")
                    assert group["weight_decay"] == (0.05 if decays else 0.0), name
        optimizer.step()
        scheduler.step()
    assert "norm.weight" not in names.values() or not classifier.visual.norm.weight.requires_grad  # MAE deletes it
    trained = {names[id(p)] for g in optimizer.param_groups for p in g["params"]}
    assert trained == {n.removeprefix("visual.") for n, p in classifier.named_parameters() if p.requires_grad}
    assert {"fc_norm.weight", "head.weight", "cls_token", "patch_embed.proj.weight"} <= trained and "norm.weight" not in trained


def test_loading_a_pretrained_run_reports_exactly_fc_norm_and_head_as_new(clip_run):
    from langmim.finetune.model import key_report
    from langmim.finetune.train import build_classifier
    from langmim.methods import load_method

    method = load_method(clip_run)
    cfg = load_config(None, TINY_MODEL + ["method=clip"])
    report = key_report(build_classifier(cfg, method, 10), method.state_dict())
    assert set(report["new"]) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert report["unused"] == ["visual.norm.bias", "visual.norm.weight"]
    assert report["ignored"] and all(not k.startswith("visual.") for k in report["ignored"])  # the text tower, projections


TINY_FINETUNE = TINY_MODEL + [
    "method=mae", "mae.decoder_width=32", "mae.decoder_depth=1", "mae.decoder_heads=2", "train.precision=fp32", "train.log_every=1",
    "finetune.train_size=48", "finetune.val_size=32", "finetune.batch_size=16", "finetune.epochs=3", "finetune.warmup_epochs=1",
    "finetune.blr=1e-2",
]


def run_cli(args: list[str], extra_env: dict | None = None, nproc: int = 0) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": scratch, **(extra_env or {})}
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
        return subprocess.run([*launcher, "-m", "langmim.cli", "finetune", "--config", "finetune_demo", "--no-tensorboard", *args],
                              env=env, capture_output=True, text=True, timeout=300)


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "model-last.pt", map_location="cpu", weights_only=True)
    return {**{f"model.{k}": v for k, v in state["model"].items()}, **{f"classifier.{k}": v for k, v in state["classifier"].items()}}


def test_a_run_killed_by_sigkill_resumes_bit_identical(tmp_path):
    """Mixup, cutmix, RandAugment, random erasing and drop path on: killed inside its third
    checkpoint write (after the first epoch's checkpoint), resumed, it ends with the weights of a
    run never interrupted; the run loads with langmim.load and as a classifier."""
    whole = run_cli([f"output_dir={tmp_path / 'whole'}", *TINY_FINETUNE])
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_cli([f"output_dir={tmp_path / 'killed'}", *TINY_FINETUNE], {"LANGMIM_TEST_KILL_IN_SAVE": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "killed" / "checkpoint-00000003.pt").is_file() and not (tmp_path / "killed" / "model-last.pt").exists()
    resumed = run_cli([f"output_dir={tmp_path / 'killed'}", "--resume", "latest", *TINY_FINETUNE])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at step 3 of 9" in resumed.stdout
    a, b = final_tensors(tmp_path / "whole"), final_tensors(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_top1" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))

    import langmim
    from langmim.finetune.train import load_classifier

    assert langmim.load(tmp_path / "whole").step == 9 and langmim.load(tmp_path / "whole" / "model-best.pt").step in (3, 6, 9)
    classifier = load_classifier(tmp_path / "whole" / "model-last.pt")
    assert classifier(torch.zeros(2, 3, 32, 32)).shape == (2, 10) and len(classifier.classes) == 10
    # the fine-tuned tower is what an export carries
    assert main(["export", str(tmp_path / "whole"), "--format", "mae", "--out", str(tmp_path / "mae")]) == 0
    exported = torch.load(tmp_path / "mae" / "mae_checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    tuned = torch.load(tmp_path / "whole" / "model-last.pt", map_location="cpu", weights_only=True)["model"]
    assert torch.equal(exported["blocks.0.attn.qkv.weight"], tuned["visual.blocks.0.attn.qkv.weight"])


def test_two_gloo_ranks_equal_one_process(tmp_path):
    """Per-sample augmentation (RandAugment, random erasing, crops) is keyed by the sample, so two
    ranks with half the batch each train the model one process trains; mixup, cutmix and drop path
    draw per rank (as in MAE) and are off here."""
    same = [*TINY_FINETUNE, "finetune.mixup=0", "finetune.cutmix=0", "finetune.drop_path=0", "finetune.epochs=2"]
    one = run_cli([f"output_dir={tmp_path / 'one'}", *same])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli([f"output_dir={tmp_path / 'two'}", *same], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for run in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, b = final_tensors(tmp_path / "one"), final_tensors(tmp_path / "two")
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


def test_mistakes_are_one_line(capsys):
    assert main(["finetune", "--dry-run", "finetune.mixup_mode=pairs"]) == 2
    assert "finetune.mixup_mode" in capsys.readouterr().err
    assert main(["finetune", "--dry-run", "finetune.batch_size=15", "finetune.accum_iter=1"]) == 2
    assert "must be even" in capsys.readouterr().err
    assert main(["finetune", "--dry-run", "finetune.pretrained=/no/such/run"]) == 2
    assert "finetune.pretrained" in capsys.readouterr().err
