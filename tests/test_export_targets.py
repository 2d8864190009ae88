"""Exports for MAE/MILAN, mmsegmentation, detectron2 (ViTDet) and BEiT: each export's keys and
shapes equal lists pinned from the target library's own files (cited at each list), the BEiT q/v
split and the mmseg renaming reproduce the tower's outputs, every export reloads with
``weights_only=True``, and mistakes are one line."""
import ast
import json
import shlex
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from langmim.api import load
from langmim.cli import TARGET_FORMATS as CLI_TARGET_FORMATS
from langmim.cli import main
from langmim.errors import LangmimError
from langmim.export import FORMATS, export
from langmim.export_targets import SIDECAR, TARGET_FORMATS, TARGETS, resample_pos_embed


def block_keys(prefix: str, names: dict[str, str], width: int, hidden: int) -> dict[str, tuple]:
    """One transformer block's parameters under a library's names (``names``: our role -> theirs)."""
    shapes = {
        "norm1": [("weight", (width,)), ("bias", (width,))], "norm2": [("weight", (width,)), ("bias", (width,))],
        "qkv": [("weight", (3 * width, width)), ("bias", (3 * width,))], "proj": [("weight", (width, width)), ("bias", (width,))],
        "fc1": [("weight", (hidden, width)), ("bias", (hidden,))], "fc2": [("weight", (width, hidden)), ("bias", (width,))],
    }
    return {f"{prefix}{theirs}.{kind}": shape for role, theirs in names.items() for kind, shape in shapes[role]}


def tower_dims(model):
    m = model.config.model
    return m.width, m.depth, m.patch_size, int(m.width * m.mlp_ratio), m.width // m.heads


def mae_pinned(model, grid: int) -> dict[str, tuple]:
    """facebookresearch/mae models_vit.py (commit efb2a8062c206524e35e47d04501ed4f544c0ae8): a subclass of
    timm's VisionTransformer: cls_token (1, 1, D), pos_embed (1, num_patches + 1, D), patch_embed.proj,
    blocks.N.{norm1, attn.qkv (qkv_bias=True), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head; main_finetune.py
    reads checkpoint['model'] and asserts the missing keys are head.* (+ fc_norm.* with --global_pool).
    zejiangh/MILAN models_vit.py (06fc5bf96e3da1fa40f43b8723a88131f1ede40c): the same names. Less the head."""
    width, depth, patch, hidden, _ = tower_dims(model)
    keys = {"cls_token": (1, 1, width), "pos_embed": (1, grid * grid + 1, width),
            "patch_embed.proj.weight": (width, 3, patch, patch), "patch_embed.proj.bias": (width,)}
    names = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(depth):
        keys.update(block_keys(f"blocks.{i}.", names, width, hidden))
    return keys | {"norm.weight": (width,), "norm.bias": (width,)}


def mmseg_pinned(model, grid: int) -> dict[str, tuple]:
    """open-mmlab/mmsegmentation, mmseg 1.x: mmseg/models/backbones/mae.py (3f8d34ee4b43d5cac00f12e911bbedf7544f77a4):
    MAE(BEiT) with cls_token, pos_embed (1, num_patches + 1, C), layers = MAETransformerEncoderLayer(bias=True): a
    full qkv bias, not BEiT's q_bias/v_bias. mmseg/models/backbones/beit.py (383826fec96787d03d603b0bfb63808c606ba59b):
    patch_embed.projection, layers.N.{ln1, attn.qkv, attn.proj, ln2, ffn.layers.0.0, ffn.layers.1, gamma_1, gamma_2}
    (and attn.relative_position_bias_table, left at MAEAttention's zeros). tools/model_converters/beit2mmseg.py
    (37872ea1ab6de48eca8b4ad6b046bcb844a12955): blocks->layers, norm->ln, mlp.fc1->ffn.layers.0.0,
    mlp.fc2->ffn.layers.1, patch_embed.proj->patch_embed.projection, written as a flat dict."""
    width, depth, patch, hidden, _ = tower_dims(model)
    keys = {"cls_token": (1, 1, width), "pos_embed": (1, grid * grid + 1, width),
            "patch_embed.projection.weight": (width, 3, patch, patch), "patch_embed.projection.bias": (width,)}
    names = {"norm1": "ln1", "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "ln2", "fc1": "ffn.layers.0.0", "fc2": "ffn.layers.1"}
    for i in range(depth):
        keys.update(block_keys(f"layers.{i}.", names, width, hidden))
        keys.update({f"layers.{i}.gamma_1": (width,), f"layers.{i}.gamma_2": (width,)})
    return keys


def detectron2_pinned(model, grid: int, img_size: int = 1024, window: int = 14) -> dict[str, tuple]:
    """facebookresearch/detectron2 (02b5c4e295e990042a714712c21dc79b731e8833) detectron2/modeling/backbone/vit.py:
    ViT has patch_embed.proj, pos_embed (1, (pretrain_img_size // patch_size)**2 + 1, C) with
    pretrain_use_cls_token, blocks.N.{norm1, attn.qkv, attn.rel_pos_h, attn.rel_pos_w (2 * input_size - 1,
    head_dim; input_size = window_size in window blocks), attn.proj, norm2, mlp.fc1, mlp.fc2}; no cls_token and
    no final norm. SimpleFeaturePyramid keeps it as self.net, GeneralizedRCNN as backbone: backbone.net.*.
    configs/common/models/mask_rcnn_vitdet.py: img_size=1024, window_size=14, use_rel_pos=True."""
    width, depth, patch, hidden, head_dim = tower_dims(model)
    keys = {"pos_embed": (1, grid * grid + 1, width), "patch_embed.proj.weight": (width, 3, patch, patch),
            "patch_embed.proj.bias": (width,)}
    names = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    global_blocks = {max(0, (i + 1) * depth // 4 - 1) for i in range(4)}  # 2, 5, 8, 11 of 12 in the config
    for i in range(depth):
        keys.update(block_keys(f"blocks.{i}.", names, width, hidden))
        size = img_size // patch if i in global_blocks else window
        keys[f"blocks.{i}.attn.rel_pos_h"] = keys[f"blocks.{i}.attn.rel_pos_w"] = (2 * size - 1, head_dim)
    return {f"backbone.net.{k}": v for k, v in keys.items()}


def beit_pinned(model, grid: int) -> dict[str, tuple]:
    """microsoft/unilm beit/modeling_finetune.py (006195f51b10ac44773cb62bad854fdfebb3c6c8): VisionTransformer with
    use_abs_pos_emb=True, use_rel_pos_bias=False, init_values > 0, use_mean_pooling=False: cls_token, pos_embed
    (1, num_patches + 1, D), patch_embed.proj, blocks.N.{gamma_1, gamma_2, norm1, attn.qkv.weight (bias=False),
    attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head. Less the head."""
    width, depth, patch, hidden, _ = tower_dims(model)
    keys = {"cls_token": (1, 1, width), "pos_embed": (1, grid * grid + 1, width),
            "patch_embed.proj.weight": (width, 3, patch, patch), "patch_embed.proj.bias": (width,)}
    names = {"norm1": "norm1", "proj": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(depth):
        keys.update(block_keys(f"blocks.{i}.", names, width, hidden))
        keys.update({f"blocks.{i}.attn.qkv.weight": (3 * width, width), f"blocks.{i}.attn.q_bias": (width,),
                     f"blocks.{i}.attn.v_bias": (width,), f"blocks.{i}.gamma_1": (width,), f"blocks.{i}.gamma_2": (width,)})
    return keys | {"norm.weight": (width,), "norm.bias": (width,)}


PINNED = {"mae": mae_pinned, "mmseg": mmseg_pinned, "detectron2": detectron2_pinned, "beit": beit_pinned}
LIBRARY_INITIALISES = {"detectron2": ("attn.rel_pos_h", "attn.rel_pos_w")}  # zeros in detectron2 (rel_pos_zero_init)


def state_dict_of(folder, fmt):
    """The export's state dict, read as the library reads it, with ``weights_only=True``."""
    loaded = torch.load(folder / TARGETS[fmt].weights, map_location="cpu", weights_only=True)
    return loaded[TARGETS[fmt].container] if TARGETS[fmt].container else loaded


@pytest.fixture(scope="module")
def exported(clip_run, tmp_path_factory):
    """Every target format of the tiny CLIP run through the command line, at the recipe's grid and at the source grid."""
    root = tmp_path_factory.mktemp("targets")
    size = load(clip_run).config.model.img_size
    for fmt in TARGET_FORMATS:
        assert main(["export", str(clip_run), "--format", fmt, "--out", str(root / fmt)]) == 0
        assert main(["export", str(clip_run), "--format", fmt, "--out", str(root / f"{fmt}-same"), "--image-size", str(size)]) == 0
    return root


def test_the_command_line_offers_every_target_format():
    assert CLI_TARGET_FORMATS == TARGET_FORMATS == ("mae", "mmseg", "detectron2", "beit")
    assert set(TARGET_FORMATS) <= set(FORMATS)


@pytest.mark.parametrize("fmt", TARGET_FORMATS)
def test_keys_and_shapes_equal_the_librarys_and_reload_with_weights_only(exported, clip_run, fmt):
    model = load(clip_run)
    grid = TARGETS[fmt].image_size // model.config.model.patch_size
    state = state_dict_of(exported / fmt, fmt)
    pinned = PINNED[fmt](model, grid)
    left_to_library = {k: v for k, v in pinned.items() if k.endswith(LIBRARY_INITIALISES.get(fmt, ("-",)))}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: v for k, v in pinned.items() if k not in left_to_library}
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in state.values())
    sidecar = json.loads((exported / fmt / SIDECAR).read_text())
    assert sidecar["keys"] == {k: list(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("fmt", TARGET_FORMATS)
def test_the_sidecar_holds_the_normalisation_sizes_grids_and_origin(exported, clip_run, fmt):
    model = load(clip_run)
    m = model.config.model
    sidecar = json.loads((exported / fmt / SIDECAR).read_text())
    target_grid = TARGETS[fmt].image_size // m.patch_size
    assert sidecar["mean"] == sidecar["std"] == [0.5, 0.5, 0.5] and sidecar["mean_0_255"] == [127.5] * 3
    assert sidecar["image_size"] == m.img_size and sidecar["patch_size"] == m.patch_size
    assert sidecar["source_grid"] == [m.img_size // m.patch_size] * 2 and sidecar["target_grid"] == [target_grid] * 2
    assert sidecar["method"] == "clip" and sidecar["step"] == model.step == 3
    assert sidecar["source_checkpoint"] == str(model.checkpoint_path)
    same = json.loads((exported / f"{fmt}-same" / SIDECAR).read_text())
    assert same["target_grid"] == same["source_grid"] and same["pos_embed"] == "unchanged"


def test_position_tables_are_resampled_to_the_target_grid_and_unchanged_at_the_source_grid(exported, clip_run):
    model = load(clip_run)
    ours = model.visual.pos_embed
    source = model.config.model.img_size // model.config.model.patch_size
    for fmt in TARGET_FORMATS:
        key = "backbone.net.pos_embed" if fmt == "detectron2" else "pos_embed"
        assert torch.equal(state_dict_of(exported / f"{fmt}-same", fmt)[key], ours), fmt
        resampled = state_dict_of(exported / fmt, fmt)[key]
        grid = TARGETS[fmt].image_size // model.config.model.patch_size
        assert resampled.shape == (1, grid * grid + 1, ours.shape[-1])
        assert torch.equal(resampled[:, :1], ours[:, :1])  # the CLS position kept
        # timm's resample_abs_pos_embed (bicubic; antialias only acts when shrinking), as MAE, mmseg and detectron2 do
        timm_table = resample_abs_pos_embed(ours, [grid, grid], [source, source], num_prefix_tokens=1, antialias=False)
        assert torch.allclose(resampled, timm_table, atol=1e-6), fmt
    assert torch.equal(resample_pos_embed(ours, source), ours)


def reference_forward(state, images, depth, heads, names, qv_bias, layer_scale):
    """A pre-norm ViT computed from a library's state dict by hand: BEiT's attention builds its qkv
    bias as cat(q_bias, zeros, v_bias); mmseg's and BEiT's blocks scale each branch by gamma."""
    proj = state[names["patch"] + ".weight"]
    x = F.conv2d(images, proj, state[names["patch"] + ".bias"], stride=proj.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], dim=1) + state["pos_embed"]
    batch, length, width = x.shape
    for i in range(depth):
        b = names["block"].format(i)

        def norm(name, h, b=b):
            return F.layer_norm(h, (width,), state[f"{b}{name}.weight"], state[f"{b}{name}.bias"], eps=1e-6)

        if qv_bias:
            bias = torch.cat([state[f"{b}attn.q_bias"], torch.zeros(width), state[f"{b}attn.v_bias"]])
        else:
            bias = state[f"{b}attn.qkv.bias"]
        qkv = F.linear(norm(names["norm1"], x), state[f"{b}attn.qkv.weight"], bias)
        q, k, v = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = F.linear((attn @ v).transpose(1, 2).reshape(batch, length, width), state[f"{b}attn.proj.weight"], state[f"{b}attn.proj.bias"])
        x = x + (state[f"{b}gamma_1"] if layer_scale else 1) * h
        h = norm(names["norm2"], x)
        h = F.linear(F.gelu(F.linear(h, state[f"{b}{names['fc1']}.weight"], state[f"{b}{names['fc1']}.bias"])),
                     state[f"{b}{names['fc2']}.weight"], state[f"{b}{names['fc2']}.bias"])
        x = x + (state[f"{b}gamma_2"] if layer_scale else 1) * h
    return x


TIMM_NAMES = {"patch": "patch_embed.proj", "block": "blocks.{}.", "norm1": "norm1", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
MMSEG_NAMES = {"patch": "patch_embed.projection", "block": "layers.{}.", "norm1": "ln1", "norm2": "ln2",
               "fc1": "ffn.layers.0.0", "fc2": "ffn.layers.1"}


def test_the_beit_q_v_split_and_the_mmseg_renaming_reproduce_the_towers_outputs(clip_run, tmp_path):
    model = load(clip_run)
    m = model.config.model
    torch.manual_seed(0)
    with torch.no_grad():  # a large key bias, so that dropping it would show if it mattered
        for block in model.visual.blocks:
            block.attn.qkv.bias[m.width: 2 * m.width] = torch.randn(m.width) * 3
    images = torch.randn(2, 3, m.img_size, m.img_size)
    with torch.no_grad():
        blocks_out = model.visual.blocks(model.visual.embed(images))
        for fmt, names, qv_bias in (("beit", TIMM_NAMES, True), ("mmseg", MMSEG_NAMES, False), ("mae", TIMM_NAMES, False)):
            export(model, fmt, tmp_path / fmt, image_size=m.img_size)
            state = state_dict_of(tmp_path / fmt, fmt)
            theirs = reference_forward(state, images, m.depth, m.heads, names, qv_bias, layer_scale=fmt != "mae")
            assert torch.allclose(theirs, blocks_out, atol=1e-5), fmt
        beit = state_dict_of(tmp_path / "beit", "beit")
        assert torch.equal(beit["norm.weight"], model.visual.norm.weight)
        qkv_bias = model.visual.blocks[0].attn.qkv.bias
        assert torch.equal(torch.cat([beit["blocks.0.attn.q_bias"], beit["blocks.0.attn.v_bias"]]),
                           torch.cat([qkv_bias[: m.width], qkv_bias[2 * m.width:]]))


def test_the_mae_export_loads_as_main_finetune_loads_it(exported, clip_run):
    """MAE's main_finetune.py --cls_token: load_state_dict(checkpoint['model'], strict=False) must miss only
    head.weight and head.bias, into the timm VisionTransformer that models_vit subclasses."""
    model = load(clip_run)
    m = model.config.model
    state = state_dict_of(exported / "mae", "mae")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=TARGETS["mae"].image_size, patch_size=m.patch_size, embed_dim=m.width, depth=m.depth, num_heads=m.heads,
        mlp_ratio=m.mlp_ratio, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_classes=10,
        global_pool="token")
    msg = vit.load_state_dict(state, strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias"} and not msg.unexpected_keys


@pytest.mark.parametrize("fmt", TARGET_FORMATS)
def test_the_example_config_names_the_checkpoint_and_the_normalisation(exported, clip_run, fmt):
    m = load(clip_run).config.model
    folder = exported / fmt
    text = (folder / TARGETS[fmt].config).read_text()
    weights = str((folder / TARGETS[fmt].weights).resolve())
    if fmt in ("mae", "beit"):
        command = shlex.split(text.strip().splitlines()[-1])
        assert command[command.index("--finetune") + 1] == weights
        assert command[command.index("--input_size") + 1] == str(TARGETS[fmt].image_size)
        flags = ("--abs_pos_emb", "--disable_rel_pos_bias", "--model_key") if fmt == "beit" else ("--global_pool",)
        assert all(flag in command for flag in flags)
        assert "0.5, 0.5, 0.5" in text
        return
    tree = ast.parse(text)  # a Python config file, as mmengine and detectron2's LazyConfig read them
    values = {ast.unparse(node.targets[0]): node.value for node in tree.body if isinstance(node, ast.Assign)}
    if fmt == "mmseg":
        preprocessor = {kw.arg: ast.literal_eval(kw.value) for kw in values["data_preprocessor"].keywords if kw.arg != "size"}
        assert preprocessor["mean"] == preprocessor["std"] == [127.5] * 3
        model_cfg = {kw.arg: kw.value for kw in values["model"].keywords}
        assert ast.literal_eval(model_cfg["pretrained"]) == weights
        backbone = {kw.arg: ast.literal_eval(kw.value) for kw in model_cfg["backbone"].keywords if kw.arg != "norm_cfg"}
        assert backbone["type"] == "MAE" and backbone["embed_dims"] == m.width and backbone["num_layers"] == m.depth
        assert backbone["patch_size"] == m.patch_size and backbone["img_size"] == (512, 512) and backbone["init_values"] == 1.0
    else:
        assert ast.literal_eval(values["train.init_checkpoint"]) == weights  # detectron2-native: no ?matching_heuristics
        assert ast.literal_eval(values["model.pixel_mean"]) == ast.literal_eval(values["model.pixel_std"]) == [127.5] * 3
        assert ast.literal_eval(values["model.backbone.net.embed_dim"]) == m.width
        assert ast.literal_eval(values["model.backbone.net.pretrain_img_size"]) == TARGETS[fmt].image_size
        assert ast.literal_eval(values["model.backbone.net.depth"]) == m.depth


def test_mistakes_are_one_line(clip_run, tmp_path, capsys):
    model = load(clip_run)
    with pytest.raises(LangmimError, match="--format must be one of timm, open_clip, safetensors, mae, mmseg, detectron2, beit"):
        export(model, "caffe", tmp_path / "x")
    with pytest.raises(SystemExit) as err:
        main(["export", str(clip_run), "--format", "caffe"])
    assert err.value.code == 2 and "invalid choice: 'caffe'" in capsys.readouterr().err

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "file").write_text("mine\n")
    for argv, words in (
        (["--out", str(tmp_path / "link")], f"'{tmp_path / 'link'}' is a symbolic link"),
        (["--out", str(tmp_path / "file")], f"--out '{tmp_path / 'file'}' is a file"),
        (["--out", str(tmp_path / "odd"), "--image-size", "100"], "--image-size 100 is not a positive multiple of the tower's patch size"),
    ):
        assert main(["export", str(clip_run), "--format", "mmseg", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("langmim: error: ") and words in lines[0], lines
    assert main(["export", str(clip_run), "--format", "timm", "--image-size", "224", "--out", str(tmp_path / "t")]) == 2
    assert "--image-size applies to --format mae, mmseg, detectron2, beit, not timm" in capsys.readouterr().err
    assert not any((tmp_path / "elsewhere").iterdir()) and (tmp_path / "file").read_text() == "mine\n"
    with pytest.raises(LangmimError, match="is a symbolic link"):  # the Python API refuses it too
        export(model, "beit", tmp_path / "link")
