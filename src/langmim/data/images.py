"""Decoding one image file safely: RGB out, or the kind of problem that makes it unusable.

A decompression bomb (a small file that claims billions of pixels) is refused from its header,
before any pixel is decoded; a truncated or corrupt file is caught when it is decoded in full,
which ``Image.verify`` alone does not do.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default limit (about 9,459 x 9,459)
MAX_MEMBER_MB = 512  # a tar member declaring more is never read: well above a PNG at MAX_IMAGE_PIXELS (RGBA: 358 MB)
MAX_SHARDS = 1_000_000  # a larger nshards.txt is a mistake (LAION-5B in shards of 10,000 samples is about 585,000)


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """RGB image, and the kind of conversion it needed (None for RGB already)."""
    if image.mode == "RGB":
        return image, None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(pixels.max(), 1.0)
        image = Image.fromarray((pixels / top * 255).round().astype(np.uint8))
        return image.convert("RGB"), "converted_16bit"
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), "converted_alpha"
    kind = {"L": "converted_grayscale", "1": "converted_grayscale", "P": "converted_palette", "CMYK": "converted_cmyk"}
    return image.convert("RGB"), kind.get(image.mode, "converted_other")


def decode_rgb(source: Path | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image | None, str | None]:
    """(RGB image, conversion kind or None) or (None, problem kind: ``unreadable_image``,
    ``oversized_image``, ``truncated_image``) of a file path or the bytes of one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                if im.width * im.height > max_pixels:
                    return None, "oversized_image"
                im.load()
                return to_rgb(im)
    except Image.DecompressionBombError:  # PIL refuses beyond twice its own limit, whatever ours is
        return None, "oversized_image"
    except UnidentifiedImageError:
        return None, "unreadable_image"
    except (OSError, SyntaxError, ValueError, EOFError):
        return None, "truncated_image"


def load_rgb(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image | None, str | None]:
    """``decode_rgb`` of a file, which may also be a ``missing_file``, a ``not_regular_file`` (a
    device, a pipe or a folder: never opened, as one could block or never end) or an ``empty_file``."""
    if not path.exists():
        return None, "missing_file"
    if not path.is_file():
        return None, "not_regular_file"
    if path.stat().st_size == 0:
        return None, "empty_file"
    return decode_rgb(path, max_pixels)
