"""Every paper-scale preset builds, counts the published architecture, and takes a step (--dry-run)."""
import re

import pytest

from langmim.cli import main
from langmim.config import preset_names


@pytest.mark.parametrize("preset", [p for p in preset_names() if p.endswith("_vit_b16")])
def test_paper_scale_preset_dry_run(preset, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--config", preset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    vision = float(re.search(r"vision_encoder_params: ([\d.]+)M", out).group(1))
    assert 85.0 < vision < 86.5  # ViT-B/16 without a head: about 86M (timm: 85.8M with its learnable pos_embed)
    assert float(re.search(r"train_gflops_per_image: ([\d.]+)", out).group(1)) > 10
    assert "dry run ok" in out
    assert not list(tmp_path.iterdir())  # nothing written
    recipe = dict(line.strip().split(": ", 1) for line in out.split("recipe:\n", 1)[1].splitlines() if line.startswith("  "))
    assert recipe["gradient clipping"] == ("max norm 1" if preset == "siglip_lit_vit_b16" else "none")
    if preset == "flip_vit_b16":  # the FLIP release also spares the class token and the position embeddings
        assert "cls_token" in recipe["weight decay"]
    elif preset == "siglip_lit_vit_b16":  # LiT: the locked image tower is neither trained nor decayed
        trainable, text = (float(re.search(rf"{k}: ([\d.]+)M", out).group(1)) for k in ("trainable_params", "text_tower_params"))
        assert text < trainable < text + 1  # the text tower, the image projection and the scale and bias
        assert "token_embedding.weight" in recipe["weight decay"]
    else:
        assert "none on" in recipe["weight decay"] and "cls_token" not in recipe["weight decay"]  # only 1-D parameters spared
    if preset in ("mae_vit_b16", "milan_vit_b16"):
        assert recipe["augmentation"] == "RandomResizedCrop(224, scale=(0.2, 1.0), bicubic) + horizontal flip"
    elif preset == "flip_vit_b16":
        assert recipe["augmentation"] == "RandomResizedCrop(224, scale=(0.5, 1.0), bilinear) + horizontal flip"
    elif preset == "siglip_lit_vit_b16":  # the release resizes the whole image
        assert recipe["augmentation"] == "RandomResizedCrop(224, scale=(1.0, 1.0), bilinear) + horizontal flip"
    else:
        assert recipe["augmentation"] == "RandomResizedCrop(224, scale=(0.5, 1.0), bilinear), no flip"
    expected = {"mae_vit_b16": "vision GELU, text none, teacher none", "milan_vit_b16": "vision GELU, text none, teacher QuickGELU",
                "flip_vit_b16": "vision GELU, text GELU, teacher none", "siglip_lit_vit_b16": "vision GELU, text GELU, teacher none"}
    assert recipe["activations"] == expected.get(preset, "vision GELU, text QuickGELU, teacher none")


def test_the_paper_scale_presets_ship():
    assert {p for p in preset_names() if p.endswith("_vit_b16")} == {"rils_vit_b16", "clip_vit_b16", "slip_vit_b16", "flip_vit_b16", "mae_vit_b16",
                                                                      "milan_vit_b16", "siglip_lit_vit_b16"}
