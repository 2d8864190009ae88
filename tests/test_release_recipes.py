"""What the paper presets take from the authors' releases: QuickGELU where the weights need it,
the logit scale clamped in place, MAE's position tables, per-family augmentation, clipping and
weight decay, timm teachers, and the ViT-L architecture."""
import json
import math

import numpy as np
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import TINY_MODEL, tiny_overrides
from langmim.config import ARCHS, load_config
from langmim.data.captioned import CropRecipe, crop_uint8
from langmim.data.pretrain import build_pretrain_dataset
from langmim.engine.loop import Trainer, pretrain
from langmim.engine.optim import param_groups
from langmim.errors import CheckpointError, ConfigError
from langmim.eval.external import load_external
from langmim.io import checkpoint_path, load_checkpoint
from langmim.methods import build_method, build_teacher
from langmim.methods.base import LOGIT_SCALE_MAX
from langmim.models.open_clip_weights import OPENAI_ONLY_KEYS, TrainedActivation, choose_quick_gelu, create_open_clip
from langmim.models.pos_embed import sincos_2d
from langmim.models.teacher import TimmTeacher
from langmim.models.vit import MaskedVisionTransformer

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# ------------------------------------------------------------------ activations of open_clip weights
@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    """Random tiny CLIP weights on disk in three layouts, and references for both activations."""
    root = tmp_path_factory.mktemp("clip_weights")
    (root / "configs").mkdir()
    (root / "configs" / "tiny-recipe.json").write_text(json.dumps(TINY_CLIP))
    (root / "configs" / "tiny-recipe-quickgelu.json").write_text(json.dumps({**TINY_CLIP, "quick_gelu": True}))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    state = open_clip.create_model("tiny-recipe", pretrained=None).state_dict()
    plain = root / "plain.pt"
    torch.save(state, plain)
    openai = root / "openai_layout.pt"  # what a state dict taken from OpenAI's release holds
    torch.save({**state, "input_resolution": torch.tensor(32), "context_length": torch.tensor(24), "vocab_size": torch.tensor(49408)}, openai)
    hub = {}
    for quick in (True, False):
        folder = root / f"hub_{quick}"
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY_CLIP, "quick_gelu": quick}, "preprocess_cfg": {}}))
        hub[quick] = folder
    references = {}
    for quick in (True, False):
        model = open_clip.create_model("tiny-recipe", pretrained=None, force_quick_gelu=quick).eval()
        model.load_state_dict(state)
        references[quick] = model
    return {"plain": plain, "openai": openai, "hub": hub, "ref": references}


PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def image_features(model):
    with torch.no_grad():
        return model.eval().encode_image(PIXELS)


@pytest.mark.parametrize("source,name,quick", [
    ("openai", "tiny-recipe", True),  # OpenAI's layout: always QuickGELU
    ("hub_true", "tiny-recipe", True),  # open_clip_config.json says quick_gelu
    ("hub_false", "tiny-recipe", False),
    ("plain", "tiny-recipe-quickgelu", True),  # a -quickgelu name is honoured
    ("plain", "tiny-recipe", False),
])
def test_open_clip_weights_run_with_the_activation_they_need(clip_weights, source, name, quick, capsys):
    path = clip_weights["hub"][source == "hub_true"] if source.startswith("hub") else clip_weights[source]
    ours = image_features(create_open_clip(name, path, "test"))
    assert torch.allclose(ours, image_features(clip_weights["ref"][quick]), atol=1e-5)
    assert not torch.allclose(ours, image_features(clip_weights["ref"][not quick]), atol=1e-3)  # the choice matters
    if source == "openai":
        assert "trained with QuickGELU" in capsys.readouterr().out


def test_weights_that_contradict_a_quickgelu_name_are_refused(clip_weights):
    with pytest.raises(ConfigError, match="quick_gelu=false"):
        create_open_clip("tiny-recipe-quickgelu", clip_weights["hub"][False], "test")


def test_unrecorded_activation_is_warned_about_where_open_clip_knows_quickgelu_weights(capsys):
    unknown = TrainedActivation(None, "nothing records it")
    assert choose_quick_gelu("ViT-B-16", unknown, "milan.teacher.source") is False
    assert "ViT-B-16-quickgelu" in capsys.readouterr().err  # OpenAI's ViT-B/16 weights need it
    assert choose_quick_gelu("tiny-recipe", unknown, "milan.teacher.source") is False  # no known QuickGELU weights: quiet
    assert capsys.readouterr().err == ""


def test_openai_layout_teacher_and_external_model_use_quickgelu(clip_weights):
    teacher = build_teacher(f"openclip:tiny-recipe:{clip_weights['openai']}")
    reference = clip_weights["ref"][True]
    with torch.no_grad():
        pooled = reference.encode_image(teacher.prepare(PIXELS))
    assert torch.allclose(teacher(PIXELS).tokens[:, 0], pooled, atol=1e-5)
    external = load_external(f"openclip:tiny-recipe:{clip_weights['openai']}")
    assert external.clip.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


@pytest.mark.parametrize("quick", [True, False])
def test_init_text_refuses_an_activation_its_weights_contradict(clip_weights, quick):
    cfg = load_config(None, [*TINY_MODEL, "method=clip", f"init.text=openclip:{clip_weights['openai']}", f"model.text_quick_gelu={quick}"])
    method = build_method(cfg)
    if not quick:
        with pytest.raises(ConfigError, match="model.text_quick_gelu=true"):
            method.load_pretrained(cfg)
        return
    method.load_pretrained(cfg)
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=24)(["a red bag on the left.", "two shirts."])
    with torch.no_grad():
        assert torch.allclose(method.eval().encode_text(tokens, normalize=False), clip_weights["ref"][True].encode_text(tokens), atol=1e-5)


def test_openai_torchscript_release_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript archive") as err:
        create_open_clip("tiny-recipe", path, "milan.teacher.source")
    assert "weights_only=False" not in str(err.value) and "open_clip_config.json" in str(err.value)
    assert set(OPENAI_ONLY_KEYS) == {"input_resolution", "context_length", "vocab_size"}


# ------------------------------------------------------------------ logit scale
def test_logit_scale_past_ln100_has_a_gradient_and_comes_back_down(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, "clip", **{"train.lr": 1e-2, "train.warmup_steps": 1, "train.weight_decay": 0.0}))
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():
        method.logit_scale.fill_(5.0)  # above ln 100 = 4.605, as AdamW can leave it
    trainer = Trainer(cfg, method, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(16, 3, 32, 32, generator=g) * 2 - 1, "noise": torch.rand(16, 16, generator=g),
             "text": torch.randint(1, 400, (16, 24), generator=g), "index": torch.arange(16)}
    method(batch)["loss"].backward()
    assert method.logit_scale.grad.item() > 0  # random features: the loss asks for a lower scale (a forward clamp gave 0)
    method.zero_grad()
    trainer.step(batch)
    assert method.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)  # clamped in place after the step
    trainer.step(batch)
    assert method.logit_scale.item() < LOGIT_SCALE_MAX - 1e-3  # and free to come back down


# ------------------------------------------------------------------ position tables
def mae_2d_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed (util/pos_embed.py), restated with numpy."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)), axis=0)
    grid = grid.reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize("dim,grid", [(16, 1), (32, 2), (64, 4), (128, 7), (768, 14)])
def test_position_tables_equal_maes_formula(dim, grid):
    ours = sincos_2d(dim, grid, cls_token=True)[0]
    assert torch.allclose(ours, torch.from_numpy(mae_2d_sincos(dim, grid)).float(), atol=1e-6)


def test_encoder_table_varies_columns_in_its_first_half():
    vit = MaskedVisionTransformer(img_size=32, patch_size=8, width=64, depth=1, heads=2)
    table = vit.pos_embed[0, 1:].view(4, 4, 64)
    assert torch.equal(table[0, :, :32], table[3, :, :32])  # first half: the same down a column
    assert not torch.equal(table[:, 0, :32], table[:, 3, :32])


# ------------------------------------------------------------------ augmentation, clipping, weight decay
def test_crop_recipe_draws_scale_interpolation_and_flip():
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :32, 0] = 255  # red left half, blue right half
    pixels[:, 32:, 2] = 255
    from PIL import Image

    image = Image.fromarray(pixels)

    def left_is_blue(recipe, seed):
        crop = crop_uint8(image, 16, np.random.default_rng(seed), recipe)
        return bool(crop[2, :, 0].float().mean() > crop[0, :, 0].float().mean())

    no_flip = CropRecipe(scale=(1.0, 1.0), hflip=False)
    flip = CropRecipe(scale=(1.0, 1.0), hflip=True)
    assert not any(left_is_blue(no_flip, s) for s in range(20))
    assert 3 < sum(left_is_blue(flip, s) for s in range(20)) < 17
    def is_one_colour(recipe, seed):
        crop = crop_uint8(image, 16, np.random.default_rng(seed), recipe).float()
        return bool(crop[0].std() < 1 and crop[2].std() < 1)

    # a 5% crop (about 14 px) mostly lies in one half; a whole-image crop never does
    assert sum(is_one_colour(CropRecipe(scale=(0.05, 0.05)), s) for s in range(20)) > 5
    assert not any(is_one_colour(no_flip, s) for s in range(20))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    a = crop_uint8(noise, 16, np.random.default_rng(0), CropRecipe(interpolation="bicubic"))
    b = crop_uint8(noise, 16, np.random.default_rng(0), CropRecipe(interpolation="bilinear"))
    assert not torch.equal(a, b)


def test_augmentation_keys_reach_the_data_set_and_are_checked(tmp_path):
    from PIL import Image

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "cat" / "a.png")
    cfg = load_config("mae_vit_b16", [f"data.root={tmp_path}"])
    assert build_pretrain_dataset(cfg).recipe == CropRecipe(True, (0.2, 1.0), "bicubic", True)
    with pytest.raises(ConfigError, match="data.crop_scale"):
        load_config(None, ["data.crop_scale=[0.6, 0.5]"])
    with pytest.raises(ConfigError, match="data.hflip"):
        load_config(None, ["data.hflip=true"])  # fashion-scenes flips itself, swapping left/right in captions
    with pytest.raises(ConfigError, match="data.interpolation"):
        load_config(None, ["data.interpolation=nearest"])


RELEASE_RECIPES = {  # preset: (crop scale, interpolation, flip, grad clip, exempt names, text QuickGELU)
    "mae_vit_b16": ([0.2, 1.0], "bicubic", True, 0.0, [], False),
    "milan_vit_b16": ([0.2, 1.0], "bicubic", True, 0.0, [], False),
    "rils_vit_b16": ([0.5, 1.0], "bilinear", False, 0.0, [], True),
    "clip_vit_b16": ([0.5, 1.0], "bilinear", False, 0.0, [], True),
    "slip_vit_b16": ([0.5, 1.0], "bilinear", False, 0.0, [], True),
    "flip_vit_b16": ([0.5, 1.0], "bilinear", True, 0.0, ["cls_token", "positional_embedding"], False),
    "siglip_lit_vit_b16": ([1.0, 1.0], "bilinear", True, 1.0, ["token_embedding.weight", "positional_embedding"], False),
}


@pytest.mark.parametrize("preset", sorted(RELEASE_RECIPES))
def test_paper_presets_follow_their_releases(preset):
    cfg = load_config(preset)
    d, t = cfg.data, cfg.train
    assert (d.crop_scale, d.interpolation, d.hflip, t.grad_clip, t.no_weight_decay, cfg.model.text_quick_gelu) == RELEASE_RECIPES[preset]
    if preset == "milan_vit_b16":
        assert cfg.settings.teacher.source.startswith("openclip:ViT-B-16-quickgelu:")


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_clipping_only_where_configured(tmp_path, clip):
    cfg = load_config(None, tiny_overrides(tmp_path, "mae", **{"train.grad_clip": clip}))
    torch.manual_seed(0)
    method = build_method(cfg)
    trainer = Trainer(cfg, method, torch.device("cpu"))
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(torch.cat([p.grad.flatten() for g in opt.param_groups for p in g["params"]]).norm()))
    g = torch.Generator().manual_seed(0)
    figures = trainer.step({"image": torch.rand(16, 3, 32, 32, generator=g) * 2 - 1, "noise": torch.rand(16, 16, generator=g), "index": torch.arange(16)})
    if clip:
        assert figures["grad_norm"] > clip and seen[0] == pytest.approx(clip, rel=1e-4)
    else:
        assert "grad_norm" not in figures and seen[0] > 1e-2


def test_weight_decay_groups_per_family(tmp_path):
    method = build_method(load_config(None, tiny_overrides(tmp_path, "rils")))
    names = {id(p): n for n, p in method.named_parameters()}

    def decayed(exempt):
        return {names[id(p)] for p in param_groups(method, 0.05, exempt)[0]["params"]}

    release = decayed([])  # MAE, SLIP, open_clip: only 1-D parameters are spared
    assert {"visual.cls_token", "decoder.mask_token", "text.positional_embedding"} <= release
    assert not any(n.endswith(".bias") or n == "logit_scale" for n in release)
    demo = decayed(load_config("demo").train.no_weight_decay)
    assert release - demo == {"visual.cls_token", "decoder.mask_token", "text.positional_embedding"}


# ------------------------------------------------------------------ timm teachers, ViT-L
@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    path = tmp_path_factory.mktemp("timm_teacher") / "vit_tiny.safetensors"
    save_file(model.state_dict(), path)
    return path


def test_timm_teacher_gives_timms_tokens_at_the_students_grid(timm_weights):
    teacher = build_teacher(f"timm:vit_tiny_patch16_224:{timm_weights}", grid_size=4)
    out = teacher(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert out.tokens.shape == (3, 17, 192) and out.cls_attention.shape == (3, 16) and out.embedding.shape == (3, 192)
    assert (out.cls_attention > 0).all() and (out.cls_attention.sum(dim=1) < 1).all()  # minus the CLS->CLS share
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, dynamic_img_size=True).eval()
    reference.load_state_dict(load_safetensors(timm_weights))
    pixels = teacher.prepare(torch.rand(3, 3, 64, 64) * 2 - 1)
    with torch.no_grad():
        assert torch.allclose(teacher.encode(pixels).tokens, reference.forward_features(pixels), atol=1e-5)


def load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_timm_teacher_drops_register_tokens():
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, reg_tokens=4,
                              no_embed_class=True, num_classes=0, dynamic_img_size=True)
    teacher = TimmTeacher(model, grid_size=4)
    out = teacher.encode(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 17, 32) and out.cls_attention.shape == (2, 16)
    with torch.no_grad():
        full = model.forward_features(torch.randn(1, 3, 32, 32))
    assert full.shape[1] == 21  # CLS + 4 registers + 16 patches in timm's own output


def test_milan_trains_with_a_timm_teacher(tmp_path, timm_weights):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", "milan", steps=3,
                                           **{"milan.teacher.source": f"timm:vit_tiny_patch16_224:{timm_weights}"}))
    run = pretrain(cfg)
    assert load_checkpoint(checkpoint_path(run, 3))["config"]["milan"]["teacher"]["embed_dim"] == 192
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


def test_vit_l16_is_timms_vit_large():
    with torch.device("meta"):
        a = ARCHS["vit_l16"]
        ours = MaskedVisionTransformer(a["img_size"], a["patch_size"], a["width"], a["depth"], a["heads"], a["mlp_ratio"])
        theirs = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
