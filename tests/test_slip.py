"""SLIP: its loss against a restatement of the release's, the views it contrasts, and the global
batch norm of its MLP."""
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL
from langmim.config import load_config
from langmim.data.scenes import FashionScenes
from langmim.data.views import ViewMaker, view_transform
from langmim.methods import build_method


def release_slip_loss(outputs: dict, ssl_temp: float, ssl_scale: float) -> torch.Tensor:
    """facebookresearch/SLIP, losses.py, on one process (``utils.all_gather_batch`` then returns
    its inputs): ``CLIPLoss.forward`` (lines 19-44), ``SIMCLRLoss.forward`` (73-101) and
    ``SLIPLoss.forward`` (119-128), restated."""
    image_embed = F.normalize(outputs["image_embed"], dim=-1, p=2)
    text_embed = F.normalize(outputs["text_embed"], dim=-1, p=2)
    labels = torch.arange(image_embed.shape[0])
    logits_per_image = outputs["logit_scale"] * image_embed @ text_embed.t()
    logits_per_text = outputs["logit_scale"] * text_embed @ image_embed.t()
    clip_loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2

    q_a, q_b = F.normalize(outputs["aug1_embed"], dim=-1, p=2), F.normalize(outputs["aug2_embed"], dim=-1, p=2)
    k_a, k_b = q_a, q_b
    masks = F.one_hot(labels, q_a.shape[0]) * 1e9
    logits_aa = torch.matmul(q_a, k_a.transpose(0, 1)) / ssl_temp - masks
    logits_bb = torch.matmul(q_b, k_b.transpose(0, 1)) / ssl_temp - masks
    logits_ab = torch.matmul(q_a, k_b.transpose(0, 1)) / ssl_temp
    logits_ba = torch.matmul(q_b, k_a.transpose(0, 1)) / ssl_temp
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return clip_loss + ssl_scale * (loss_a + loss_b) / 2


@pytest.mark.parametrize("ssl_scale, ssl_temperature", [(1.0, 0.1), (0.5, 0.2)])
def test_slip_loss_is_the_releases_in_float64(ssl_scale, ssl_temperature):
    model = build_method(load_config(None, TINY_MODEL + ["method=slip", f"slip.ssl_scale={ssl_scale}",
                                                         f"slip.ssl_temperature={ssl_temperature}"])).double()
    torch.manual_seed(0)
    b = 6
    image, text, view_a, view_b = (torch.randn(b, 8, dtype=torch.float64, requires_grad=True) for _ in range(4))
    scale = model.logits_per_sample(b)["logit_scale"]
    inputs = [image, text, view_a, view_b, model.logit_scale]
    # langmim's features hand the loss normalised image and caption embeddings; the release normalises in the loss
    ours = model.loss({"image_embed": F.normalize(image, dim=-1), "text_embed": F.normalize(text, dim=-1),
                       "view_a": view_a, "view_b": view_b, "logit_scale": scale})["loss"]
    theirs = release_slip_loss({"image_embed": image, "text_embed": text, "aug1_embed": view_a, "aug2_embed": view_b,
                                "logit_scale": model.logit_scale.exp()}, ssl_temperature, ssl_scale)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for mine, release in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        assert torch.allclose(mine, release, rtol=1e-10, atol=1e-13)


def test_slips_mlp_is_the_releases_and_contrasts_each_view_batch_on_its_own():
    model = build_method(load_config(None, TINY_MODEL + ["method=slip", "slip.ssl_mlp_dim=48", "slip.ssl_embed_dim=24"]))
    assert [name for name, _ in model.image_mlp.named_children()] == ["layer1", "bn1", "relu1", "layer2", "bn2", "relu2", "layer3"]
    assert (model.image_mlp.layer1.in_features, model.image_mlp.layer1.out_features, model.image_mlp.layer3.out_features) == (64, 48, 24)
    default = build_method(load_config(None, ["method=slip"]))  # the demo size's scaled-down MLP
    assert (default.image_mlp.layer1.out_features, default.image_mlp.layer3.out_features) == (512, 128)
    torch.manual_seed(0)
    images = torch.rand(4, 2, 3, 32, 32) * 2 - 1
    batch = {"image": images[:, 0], "views": images, "text": model.tokenizer(["a red bag."] * 4), "index": torch.arange(4)}
    feats = model.train().features(batch)
    with torch.no_grad():
        pooled = model.visual.pool(model.visual.forward_features(images[:, 1]), "mean")
        assert torch.allclose(feats["view_b"], model.image_mlp(pooled), atol=1e-5)  # batch norm over view b's batch alone


def test_views_are_a_pure_function_of_seed_and_sample():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    make = ViewMaker("csv", 32, seed=3)
    first = make(image, 17)
    assert first.shape == (2, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, make(image, 17)) and torch.equal(first, ViewMaker("csv", 32, seed=3)(image, 17))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first, make(image, 18))


def test_scene_views_keep_what_a_caption_names():
    """Without the blur, every view of a built-in scene is the scene flipped or not and shifted by at
    most three pixels: colours untouched, items where the (flip-swapped) caption puts them."""
    scenes = FashionScenes(split="train", canvas=64, seed=0, augment=False)
    image = scenes[5]["image"]
    transform = view_transform("fashion-scenes", 64, blur=0.0)
    torch.manual_seed(0)
    for _ in range(20):
        view = transform(image)
        candidates = [torch.roll(flipped, (dy, dx), dims=(1, 2)) for flipped in (image, image.flip(-1))
                      for dy in range(-3, 4) for dx in range(-3, 4)]
        inner = (slice(None), slice(4, -4), slice(4, -4))  # away from the borders the shift fills
        assert any(torch.equal(view[inner], c[inner]) for c in candidates)
    recoloured = view_transform("csv", 64, blur=0.0)
    assert any(not torch.equal(torch.unique(recoloured(image)), torch.unique(image)) for _ in range(5))  # SLIP's jitter
