"""Where an image lands in the HD transform, and how many image tokens it becomes: arithmetic only (no torch, no
PIL), so the data checks, the sequence-length statistics and the FLOPs model share it with the transform itself
(`image_processing.py`) without importing a tensor library (docs/RECIPE.md §2.6/2.7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_CROPS = 16


def check_num_crops(num_crops: int) -> int:
    if isinstance(num_crops, bool) or not isinstance(num_crops, int) or not 1 <= num_crops <= MAX_CROPS:
        raise ValueError(
            f"num_crops={num_crops!r} is out of range: it must be an integer from 1 to {MAX_CROPS} "
            "(the recipe uses 16 for single images, 4 for multi-frame input)"
        )
    return num_crops


@dataclass(frozen=True)
class HDGeometry:
    """Where an image of a given raw size ends up: resized size and padded HD size (pixels)."""

    resized_w: int
    resized_h: int
    hd_w: int  # padded HD width, a multiple of crop
    hd_h: int  # padded HD height, a multiple of crop
    transposed: bool


def hd_geometry(width: int, height: int, num_crops: int, crop: int = 336) -> HDGeometry:
    check_num_crops(num_crops)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * crop)
    new_h = int(new_w / ratio)
    if new_h < 1:
        raise ValueError(f"a {width}x{height} image is too elongated: it would be resized to zero pixels")
    pad_h = int(math.ceil(new_h / crop) * crop)
    if transposed:
        return HDGeometry(new_h, new_w, pad_h, new_w, True)
    return HDGeometry(new_w, new_h, new_w, pad_h, False)


def tokens_for_hd_size(hd_h: int, hd_w: int, crop: int = 336, patch: int = 14) -> int:
    """`(h*w + 1) * g^2 + 1 + (h + 1) * g` with h, w crops per side and g = crop / patch / 2 (12 for 336/14)."""
    g = crop // patch // 2
    h, w = hd_h // crop, hd_w // crop
    return (h * w + 1) * g * g + 1 + (h + 1) * g


def num_image_tokens(width: int, height: int, num_crops: int, *, crop_size: int = 336, patch_size: int = 14) -> int:
    """Image placeholder tokens for a raw `width x height` image at `num_crops`."""
    geo = hd_geometry(width, height, num_crops, crop_size)
    return tokens_for_hd_size(geo.hd_h, geo.hd_w, crop_size, patch_size)
