"""External baselines (timm, open_clip with weights on disk) in the evaluation suite."""
import json

import open_clip
import timm
import torch
from safetensors.torch import save_file

from langmim.cli import main
from langmim.eval.external import load_external

TINY_EVAL = ["eval.test_size=60", "eval.probe_train_size=80", "eval.knn_k=[10]", "eval.retrieval_size=40"]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_timm_model_from_disk_matches_timm_and_evaluates(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    save_file(model.state_dict(), tmp_path / "tiny.safetensors")
    external = load_external(f"timm:vit_tiny_patch16_224:{tmp_path / 'tiny.safetensors'}")
    images = torch.rand(2, 3, 224, 224) * 2 - 1  # langmim normalisation: mean = std = 0.5
    with torch.no_grad():
        ours = external.visual.forward_features(images)
        theirs = model.forward_features((images * 0.5 + 0.5 - 0.5) / 0.5)  # timm's own: mean = std = 0.5
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert main(["eval", "--checkpoint", f"timm:vit_tiny_patch16_224:{tmp_path / 'tiny.safetensors'}",
                 "--tasks", "zeroshot,knn", "--output", str(tmp_path / "res"), *TINY_EVAL]) == 0
    assert "zeroshot skipped" in capsys.readouterr().out
    result = json.loads((tmp_path / "res" / "timm-vit_tiny_patch16_224_knn_fashion-mnist.json").read_text())
    assert result["split_sizes"] == {"test": 60, "train": 80}


def test_open_clip_model_from_disk_evaluates_zero_shot_and_retrieval(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None).eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    external = load_external(f"openclip:tiny-clip:{tmp_path / 'tiny.pt'}")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = (torch.tensor(open_clip.get_model_preprocess_cfg(model)[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        assert torch.allclose(external.encode_image(images), model.encode_image((images * 0.5 + 0.5 - mean) / std, normalize=True), atol=1e-5)
    out = tmp_path / "res"
    assert main(["eval", "--checkpoint", f"openclip:tiny-clip:{tmp_path / 'tiny.pt'}", "--tasks", "zeroshot,retrieval",
                 "--output", str(out), *TINY_EVAL]) == 0
    assert {p.name for p in out.glob("*.json")} == {
        "openclip-tiny-clip_zeroshot_fashion-mnist.json", "openclip-tiny-clip_retrieval_fashion-scenes-captions.json"}
