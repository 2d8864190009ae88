"""Image normalisation and prompt text shared by training, evaluation, export and the API:
langmim's pixel normalisation (mean = std = 0.5 per channel), uint8 -> float conversion, the
PIL preprocess of a loaded model, and the zero-shot prompt templates."""
from __future__ import annotations

import re

import torch

IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {} in the centre.",
    "a large white {} in the middle.",
    "a white {} in the centre.",
    "a grey {} in the middle.",
    "an image showing a large {} in the centre.",
    "a picture with a {} in the centre.",
    "there is a {} in the middle.",
)

_ARTICLE = re.compile(r"\b(an?) (?=(\w))")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (3,H,W) or (B,3,H,W) -> float normalised with IMAGE_MEAN and IMAGE_STD."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(-1, 1, 1)
    return (images.float() / 255 - mean) / std


def build_preprocess(img_size: int):
    """PIL image -> normalised tensor at the model's resolution (a torchvision ``Compose``)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])


def fill_template(template: str, name: str) -> str:
    """Put a class name into a zero-shot template, fixing "a"/"an" ("an ankle boot")."""
    return fix_articles(template.format(name))


def fix_articles(text: str) -> str:
    """Make every article "an" before a vowel and "a" before anything else."""
    return _ARTICLE.sub(lambda m: ("an " if m.group(2) in "aeiou" else "a "), text)
