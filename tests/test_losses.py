"""Each loss on small hand-made cases whose value is known."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL
from langmim.config import load_config
from langmim.methods import build_method
from langmim.methods.mae import masked_pixel_loss, patchify
from langmim.methods.rils import reconstruction_kl, retrieval_hits


def test_kl_is_zero_when_prediction_equals_target():
    feats = F.normalize(torch.randn(2, 5, 8), dim=-1)
    protos = F.normalize(torch.randn(4, 8), dim=-1)
    kl = reconstruction_kl(feats, feats, protos, 0.1, 0.1)
    assert kl.shape == (2, 5)
    assert torch.allclose(kl, torch.zeros_like(kl), atol=1e-6)
    other = F.normalize(torch.randn(2, 5, 8), dim=-1)
    assert (reconstruction_kl(other, feats, protos, 0.1, 0.1) > 0).all()


def test_kl_matches_hand_computation():
    protos = torch.eye(2)
    prediction = torch.tensor([[[1.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0]]])
    q = torch.softmax(torch.tensor([1.0, 0.0]) / 0.5, 0)
    p = torch.softmax(torch.tensor([0.0, 1.0]) / 0.25, 0)
    expected = (p * (p.log() - q.log())).sum()
    assert reconstruction_kl(prediction, target, protos, 0.5, 0.25).item() == pytest.approx(expected.item(), rel=1e-5)


def test_retrieval_hits_flags_wrong_retrievals():
    texts = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0], [0, 0, 1.0]])  # image 1 retrieves caption 0
    assert retrieval_hits(images, texts).tolist() == [1.0, 0.0, 1.0]


def _rils():
    torch.manual_seed(0)
    return build_method(load_config(None, TINY_MODEL + ["method=rils"]))


def test_rils_reconstruction_only_counts_masked_patches_of_hit_samples():
    model = _rils()
    b, n, e = 3, 4, 3
    texts = torch.eye(3)
    feats = {
        "image_embed": torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0], [0, 0, 1.0]]),
        "text_embed": texts,
        "prediction": F.normalize(torch.randn(b, n, e), dim=-1),
        "target": F.normalize(torch.randn(b, n, e), dim=-1),
        "mask": torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]]),
        "logit_scale": torch.full((b,), 10.0),
    }
    out = model.loss(feats)
    kl = reconstruction_kl(feats["prediction"], feats["target"], texts, 0.1, 0.04)
    # sample 1 retrieves the wrong caption, so only sample 0's and 2's masked patches count
    expected = (kl[0, :2].sum() + kl[2, 1:3].sum()) / 4
    assert out["loss_rec"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["match_rate"].item() == pytest.approx(2 / 3)
    assert out["loss"].item() == pytest.approx(out["loss_clip"].item() + 0.5 * expected.item(), rel=1e-5)


def test_clip_loss_is_log_batch_for_uninformative_features():
    model = build_method(load_config(None, TINY_MODEL + ["method=clip"]))
    b = 6
    same = F.normalize(torch.ones(b, 4), dim=-1)
    out = model.loss({"image_embed": same, "text_embed": same, "logit_scale": torch.full((b,), 20.0)})
    assert out["loss"].item() == pytest.approx(math.log(b), rel=1e-5)
    perfect = torch.eye(b)
    low = model.loss({"image_embed": perfect, "text_embed": perfect, "logit_scale": torch.full((b,), 100.0)})
    assert low["loss"].item() < 1e-6


@pytest.mark.parametrize("overrides", [["method=siglip"], ["method=clip", "clip.contrastive_loss=sigmoid"],
                                       ["method=rils", "rils.contrastive_loss=sigmoid"]])
def test_the_sigmoid_loss_is_open_clips_siglip_loss_in_float64(overrides):
    """The sigmoid loss, wherever it is chosen, starts at SigLIP's scale and bias and equals
    open_clip's SigLipLoss (and the paper's sum over pairs, by hand) in value and gradients."""
    from open_clip.loss import SigLipLoss

    model = build_method(load_config(None, TINY_MODEL + overrides)).double()
    assert (model.logit_scale.item(), model.logit_bias.item()) == (pytest.approx(math.log(10)), -10.0)
    torch.manual_seed(0)
    b, e = 5, 4
    image, text = (F.normalize(torch.randn(b, e, dtype=torch.float64), dim=-1).requires_grad_() for _ in range(2))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(-2.5)
    ours = model.contrastive_loss(image, text, model.logits_per_sample(b))
    ours_grads = torch.autograd.grad(ours, [image, text, model.logit_scale, model.logit_bias])
    theirs = SigLipLoss()(image, text, model.logit_scale.exp(), model.logit_bias)
    theirs_grads = torch.autograd.grad(theirs, [image, text, model.logit_scale, model.logit_bias])
    signs = 2 * torch.eye(b, dtype=torch.float64) - 1  # +1 for an image's own caption, -1 for every other
    by_hand = -F.logsigmoid(signs * (7.0 * image @ text.T - 2.5)).sum() / b
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12) == pytest.approx(by_hand.item(), rel=1e-12)
    for a, c in zip(ours_grads, theirs_grads):
        assert torch.allclose(a, c, rtol=1e-12, atol=1e-15)


def test_the_sigmoid_bias_starts_where_the_method_section_says():
    """SigLIP's released LiT recipe starts the bias at -2.71, not the paper's -10."""
    model = build_method(load_config(None, TINY_MODEL + ["method=siglip", "siglip.sigmoid_bias_init=-2.71"]))
    assert model.logit_bias.item() == pytest.approx(-2.71)
    assert load_config("siglip_lit_vit_b16").settings.sigmoid_bias_init == -2.71


def test_the_softmax_loss_has_no_bias():
    model = build_method(load_config(None, TINY_MODEL + ["method=clip"]))
    assert model.logit_bias is None and "logit_bias" not in model.state_dict()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_mae_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    base = masked_pixel_loss(pred, target, mask, norm_pix=False)
    expected = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
    assert base.item() == pytest.approx(expected.item(), rel=1e-6)
    changed = pred.clone()
    changed[mask == 0] += 100.0  # visible patches must not matter
    assert masked_pixel_loss(changed, target, mask, norm_pix=False).item() == pytest.approx(base.item(), rel=1e-6)


def test_mae_normalises_target_pixels_per_patch():
    torch.manual_seed(0)
    pred, target = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    mask = torch.ones(1, 3)
    shifted = target * 3.0 + torch.tensor([5.0, -2.0, 0.5]).view(1, 3, 1)  # per-patch affine change
    a = masked_pixel_loss(pred, target, mask, norm_pix=True)
    b = masked_pixel_loss(pred, shifted, mask, norm_pix=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-4)
    assert masked_pixel_loss(pred, shifted, mask, norm_pix=False).item() != pytest.approx(a.item(), rel=1e-2)


def test_patchify_layout():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    # second patch (row 0, column 1), first pixel, all channels
    assert patches[0, 1, :3].tolist() == [images[0, c, 0, 2].item() for c in range(3)]
