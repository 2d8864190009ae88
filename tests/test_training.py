"""Short real training runs on the built-in scenes: loss goes down, resume is exact,
accumulation with cached features equals one large batch."""
import json

import pytest
import torch

import langmim
from conftest import tiny_overrides
from langmim.config import load_config
from langmim.data.pretrain import build_pretrain_loader
from langmim.engine.loop import Trainer, move, pretrain
from langmim.io import list_checkpoints, load_checkpoint
from langmim.methods import build_method
from langmim.models.text import build_tokenizer


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["mae", "clip", "rils"])
def test_short_training_lowers_loss(tmp_path, method):
    # clipped as in the demo preset: without it the tiny CLIP ends near chance (ln 32 = 3.47) in 60 steps
    cfg = load_config(None, tiny_overrides(tmp_path, method, steps=60, **{
        "train.lr": 3e-3, "train.batch_size": 32, "train.warmup_steps": 5, "train.grad_clip": 1.0}))
    pretrain(cfg, log_tensorboard=False)
    losses = _losses(tmp_path)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert (tmp_path / "config.yaml").is_file()


def test_metrics_log_every_figure(tmp_path):
    pretrain(load_config(None, tiny_overrides(tmp_path, "rils", steps=2)), log_tensorboard=False)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "loss_clip", "loss_rec", "match_rate", "logit_scale", "lr", "images_per_s", "step"):
        assert key in record


@pytest.mark.parametrize("method", ["mae", "rils"])
def test_resume_gives_the_same_weights(tmp_path, method):
    full = load_config(None, tiny_overrides(tmp_path / "full", method, steps=6))
    pretrain(full, log_tensorboard=False)

    part = load_config(None, tiny_overrides(tmp_path / "part", method, steps=6))
    pretrain(part, log_tensorboard=False, stop_after=3)
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == ["checkpoint-00000003.pt"]
    pretrain(part, resume="latest", log_tensorboard=False)

    a = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "part")[-1])
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_checkpoint_loads_with_weights_only_and_carries_full_state(tmp_path):
    pretrain(load_config(None, tiny_overrides(tmp_path, "clip", steps=2)), log_tensorboard=False)
    path = list_checkpoints(tmp_path)[-1]
    state = torch.load(path, weights_only=True)
    for key in ("model", "optimizer", "scheduler", "rng", "step", "config", "versions", "schema_version", "data_position"):
        assert key in state
    assert state["versions"]["torch"] == torch.__version__
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("method", ["clip", "rils", "siglip"])
def test_cached_accumulation_equals_full_batch(tmp_path, method):
    grads = []
    for accum in (1, 4):
        cfg = load_config(None, tiny_overrides(tmp_path, method, **{"train.accum_freq": accum, "train.grad_clip": 0}))
        torch.manual_seed(0)
        model = build_method(cfg)
        trainer = Trainer(cfg, model, torch.device("cpu"))
        tok = build_tokenizer(cfg.model.context_length)
        batch = next(iter(build_pretrain_loader(cfg, tok, model.visual.num_patches, 0)))
        trainer.optimizer.step = lambda: None  # keep the gradients for comparison
        trainer.optimizer.zero_grad = lambda set_to_none=True: None
        figures = trainer.step(move(batch, torch.device("cpu")))
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, figures["loss"]))
    (g1, l1), (g4, l4) = grads
    assert l1 == pytest.approx(l4, rel=1e-5)
    assert g1.keys() == g4.keys()
    for name in g1:
        assert torch.allclose(g1[name], g4[name], rtol=1e-3, atol=1e-6), name


def test_api_load_encodes_images_and_text(tmp_path):
    pretrain(load_config(None, tiny_overrides(tmp_path, "rils", steps=2)), log_tensorboard=False)
    model = langmim.load(tmp_path)
    assert not model.training
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    img = model.encode_image(images)
    txt = model.encode_text(model.tokenizer(["a red bag", "a blue coat"]))
    assert img.shape == txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    from PIL import Image

    tensor = model.preprocess(Image.new("L", (28, 28), 128))
    assert tensor.shape == (3, 32, 32)


@pytest.mark.parametrize("method", ["mae", "rils"])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, method):
    from distributed_step import one_step

    for flag in ("false", "true"):
        one_step(str(tmp_path / f"{flag}.pt"), tiny_overrides(tmp_path / flag, method, **{"train.grad_checkpointing": flag}))
    plain, recomputed = (torch.load(tmp_path / f"{f}.pt") for f in ("false", "true"))
    assert recomputed["scalars"]["loss"] == pytest.approx(plain["scalars"]["loss"], rel=1e-6)
    for name, grad in plain["grads"].items():
        assert torch.allclose(recomputed["grads"][name], grad, rtol=1e-4, atol=1e-7), name


@pytest.mark.slow
def test_compiled_towers_train_and_keep_checkpoint_keys(tmp_path):
    pretrain(load_config(None, tiny_overrides(tmp_path, "clip", steps=2, **{"train.compile": "true"})), log_tensorboard=False)
    state = load_checkpoint(list_checkpoints(tmp_path)[-1])["model"]
    assert "visual.blocks.0.attn.qkv.weight" in state and not any("_orig_mod" in k for k in state)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from langmim.engine.loop import TrainingDiverged
    from langmim.methods.mae import MAE

    real_loss, calls = MAE.loss, []

    def poisoned(self, feats):
        calls.append(1)
        out = real_loss(self, feats)
        return {**out, "loss": out["loss"] * float("nan")} if len(calls) == 5 else out

    monkeypatch.setattr(MAE, "loss", poisoned)
    cfg = load_config(None, tiny_overrides(tmp_path, "mae", steps=8, **{"train.ckpt_every": 2, "train.keep_checkpoints": 5}))
    with pytest.raises(TrainingDiverged, match="at step 5"):
        pretrain(cfg, log_tensorboard=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002.pt", "checkpoint-00000004.pt"]
    state = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bf16_on_cpu_runs_attention_in_fp32_and_restores_sdpa():
    from langmim.engine.precision import autocast, cpu_attention_in_fp32

    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    mask = torch.full((17, 17), float("-inf")).triu(1)
    with cpu_attention_in_fp32(torch.device("cpu"), "bf16"), autocast(torch.device("cpu"), "bf16"):
        out = torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    assert out.dtype == torch.bfloat16
    reference = sdpa(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), attn_mask=mask)
    assert torch.allclose(out.float(), reference, atol=1e-2)
    with pytest.raises(RuntimeError, match="inside"), cpu_attention_in_fp32(torch.device("cpu"), "bf16"):
        raise RuntimeError("inside")
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


def test_auto_precision_is_bf16_only_with_native_bf16():
    from langmim.engine.precision import effective_precision

    cpu = torch.device("cpu")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert effective_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert effective_precision("auto", torch.device("meta")) == "fp32"
    assert [effective_precision(p, cpu) for p in ("fp32", "bf16")] == ["fp32", "bf16"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_bf16_training_step_matches_fp32_closely(tmp_path, checkpointing):
    from langmim.engine.dryrun import synthetic_batch

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(None, tiny_overrides(tmp_path, "rils", steps=2) + [f"train.precision={precision}"])
        cfg.train.grad_checkpointing = checkpointing
        torch.manual_seed(0)
        method = build_method(cfg)
        method.set_grad_checkpointing(checkpointing)
        losses[precision] = Trainer(cfg, method, torch.device("cpu")).step(synthetic_batch(cfg, method, 8))["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_readme_python_api_snippet_runs(tmp_path, capsys, monkeypatch):
    """The README's Python API block, run as written on a tiny CLIP run and a generated image."""
    import re
    from pathlib import Path

    from PIL import Image

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    pretrain(load_config(None, tiny_overrides(tmp_path / "run", "clip", steps=1)), log_tensorboard=False)
    Image.new("RGB", (40, 40), (250, 250, 250)).save(tmp_path / "shirt.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"runs/demo"', '"run"'), "README.md", "exec"), {})
    probabilities = [float(x) for x in re.findall(r"[\d.]+(?:e-?\d+)?", capsys.readouterr().out.split("tensor(")[-1])]
    assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-4


def wandb_history(run_dir):
    """The history rows of an offline W&B run, read from its transaction log (LevelDB-style records
    of wandb's own protobuf ``Record``), without wandb's service."""
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, chunk, rows = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        chunk = payload if kind in (1, 2) else chunk + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_tensorboard_and_wandb_get_the_same_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, tiny_overrides(tmp_path, "rils", steps=3, **{"train.report_to": "[tensorboard,wandb]"}))
    pretrain(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    board = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    wandb_rows = {(key, row["_step"]): value for row in wandb_history(tmp_path) for key, value in row.items() if key.startswith("train/")}
    assert set(board) == set(wandb_rows) and {step for _, step in board} == {1, 2, 3}
    assert all(board[k] == pytest.approx(wandb_rows[k], rel=1e-6) for k in board)  # float32 events, float64 in W&B
    assert {"train/loss", "train/loss_rec", "train/match_rate", "train/lr"} <= {tag for tag, _ in board}


def test_report_to_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from langmim.errors import ConfigError

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install wandb"):
        pretrain(load_config(None, tiny_overrides(tmp_path, "mae", steps=1, **{"train.report_to": "[wandb]"})))
    with pytest.raises(ConfigError, match="train.report_to"):
        load_config(None, ["train.report_to=[mlflow]"])


@pytest.mark.parametrize("method", sorted(langmim.method_specs.METHODS))
def test_train_compile_compiles_the_vision_tower_every_method_calls(tmp_path, method, clip_run):
    """``train.compile=true`` must reach the vision tower's ``forward_features`` (what every
    method calls), not only ``forward``: a recording Dynamo backend sees its patch embedding."""
    from langmim.engine.dryrun import synthetic_batch

    graphs: list[list[str]] = []

    def recording(gm, example_inputs):
        graphs.append([node.name for node in gm.graph.nodes if node.op in ("placeholder", "get_attr")])
        return gm.forward

    extra = {"milan.teacher.source": f"langmim:{clip_run}"} if method == "milan" else {}
    cfg = load_config(None, tiny_overrides(tmp_path, method, **extra))
    model = build_method(cfg, with_teacher=True)
    model.compile_towers(backend=recording)
    torch._dynamo.reset()
    Trainer(cfg, model, torch.device("cpu")).step(move(synthetic_batch(cfg, model, batch_size=4), torch.device("cpu")))
    assert any("patch_embed" in name for graph in graphs for name in graph), graphs
    assert any("patch_embed" in k for k in model.state_dict()) and not any("_orig_mod" in k for k in model.state_dict())
