"""Masking keeps exactly the requested tokens, and masked patches cannot reach the encoder."""
import torch

from langmim.models.masking import mask_from_noise, num_visible
from langmim.models.vit import MaskedVisionTransformer


def test_mask_keeps_requested_count_and_is_consistent():
    noise = torch.rand(5, 64)
    keep = num_visible(64, 0.75)
    m = mask_from_noise(noise, keep)
    assert keep == 16
    assert m.ids_keep.shape == (5, 16)
    assert (m.mask.sum(1) == 48).all()
    # the kept ids are the visible patches, and they are the lowest-noise ones
    visible = torch.zeros(5, 64).scatter_(1, m.ids_keep, 1.0)
    assert torch.equal(visible, 1 - m.mask)
    assert torch.equal(m.ids_keep.sort(1).values, noise.argsort(1)[:, :16].sort(1).values)


def test_masked_patches_cannot_influence_encoder():
    torch.manual_seed(0)
    vit = MaskedVisionTransformer(img_size=32, patch_size=8, width=32, depth=2, heads=2).eval()
    images = torch.randn(3, 3, 32, 32)
    m = mask_from_noise(torch.rand(3, 16), 4)
    out = vit.forward_features(images, m.ids_keep)
    assert out.shape == (3, 5, 32)
    edited = images.clone()
    patch_mask = m.mask.reshape(3, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)
    edited += patch_mask[:, None] * torch.randn_like(images) * 10  # change only masked pixels
    assert torch.allclose(vit.forward_features(edited, m.ids_keep), out, atol=1e-6)
    assert not torch.allclose(vit.forward_features(edited), vit.forward_features(images), atol=1e-3)


def test_subset_forward_equals_full_forward_when_all_kept():
    torch.manual_seed(0)
    vit = MaskedVisionTransformer(img_size=32, patch_size=8, width=32, depth=2, heads=2).eval()
    images = torch.randn(2, 3, 32, 32)
    ids = torch.arange(16).expand(2, -1)
    assert torch.allclose(vit.forward_features(images, ids), vit.forward_features(images), atol=1e-6)
