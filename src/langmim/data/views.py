"""Two augmented views of every training image, for a method that contrasts an image with itself
(SLIP's SimCLR term). They are drawn in the collator from the sample's own uint8 image, seeded
by (seed, sample index), so a resumed or distributed run sees the views an uninterrupted single
process would.

Real images (csv, imagefolder, webdataset) get SLIP's SimCLR recipe: RandomResizedCrop(scale
0.08-1), colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (sigma
0.1-2; p 0.5), horizontal flip; the crop is taken from the training image, itself a crop of
the original. Built-in scenes get only what their own augmentation draws, a horizontal flip and
a shift of at most ``MAX_SHIFT`` pixels, plus the blur: no colour, brightness or zoom change, so
every garment keeps the colour and (up to the flip that swaps left and right in a caption) the
place a caption names.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from .scenes.sampler import MAX_SHIFT

VIEW_STREAM = 15485863  # separates the views' RNG stream from the scene, noise, epoch and visit streams


def view_transform(data_name: str, size: int, blur: float = 0.5) -> v2.Compose:
    """One view's random transform of a (3, size, size) uint8 image; ``blur`` is the blur's probability."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # SimCLR's blur kernel: about a tenth of the image, odd
    blurred = v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur)
    if data_name == "fashion-scenes":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=0, translate=(MAX_SHIFT / size,) * 2), blurred])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        blurred,
        v2.RandomHorizontalFlip(),
    ])


class ViewMaker:
    """(3, H, W) uint8 image and its global sample index -> (2, 3, H, W) uint8 views."""

    def __init__(self, data_name: str, size: int, seed: int) -> None:
        self.transform, self.seed = view_transform(data_name, size), seed

    def __call__(self, image: torch.Tensor, index: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # the CPU generator only, restored afterwards
            torch.random.default_generator.manual_seed(int(np.random.default_rng([self.seed, VIEW_STREAM, index]).integers(2**62)))
            return torch.stack([self.transform(image), self.transform(image)])
