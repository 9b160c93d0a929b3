"""The HD image transform of Phi-3(.5)-vision (docs/RECIPE.md §2.6/2.7), on PIL and torch only.

Per image: RGB; portrait images are transposed to landscape; the largest `scale` with
`scale * ceil(scale / ratio) <= num_crops` sets the width `scale * crop` (images are always rescaled to it,
upsampling included); bilinear PIL resize (what torchvision's resize does for PIL input); the height is padded to
the next multiple of `crop` with centred white rows; transposed back; to [0, 1], CLIP-normalised; the global view is
a bicubic resize of the normalised tensor to `crop x crop`; local crops row-major; zero crops pad to `num_crops+1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .geometry import check_num_crops, hd_geometry, tokens_for_hd_size

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def hd_transform(image: Image.Image, num_crops: int, crop: int = 336) -> Image.Image:
    """Resize + centred white height padding, as a PIL image of size (hd_w, hd_h)."""
    image = image.convert("RGB")
    transposed = image.width < image.height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    geo = hd_geometry(image.width, image.height, num_crops, crop)
    resized = image.resize((geo.resized_w, geo.resized_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (geo.hd_w, geo.hd_h), (255, 255, 255))
    canvas.paste(resized, (0, int((geo.hd_h - geo.resized_h) / 2)))
    return canvas.transpose(Image.Transpose.TRANSPOSE) if transposed else canvas


def normalize(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """ToTensor then Normalize, with torchvision's operation order: (x / 255 - mean) / std."""
    chw = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous().float()
    return (chw / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def hd_tensor(image: Image.Image, num_crops: int, crop: int = 336, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """`normalize(hd_transform(image))`, bit for bit, with fewer copies: no padded PIL canvas, no transposing back
    (the portrait case writes the resized pixels transposed into the output), normalisation in place."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    transposed = image.width < image.height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    geo = hd_geometry(image.width, image.height, num_crops, crop)
    resized = torch.from_numpy(np.array(image.resize((geo.resized_w, geo.resized_h), Image.Resampling.BILINEAR)))
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    white = torch.full((3, 1, 1), 255.0).div_(255.0).sub_(mean_t).div_(std_t)
    top, rows = int((geo.hd_h - geo.resized_h) / 2), geo.resized_h  # centred white rows (landscape frame)
    if transposed:  # portrait: the padding rows become columns
        out = torch.empty(3, geo.hd_w, geo.hd_h)
        region, source = out[:, :, top : top + rows], resized.permute(2, 1, 0)
        out[:, :, :top], out[:, :, top + rows :] = white, white
    else:
        out = torch.empty(3, geo.hd_h, geo.hd_w)
        region, source = out[:, top : top + rows, :], resized.permute(2, 0, 1)
        out[:, :top, :], out[:, top + rows :, :] = white, white
    region.copy_(source)
    region.div_(255.0).sub_(mean_t).div_(std_t)
    return out


def crops_of(hd: torch.Tensor, num_crops: int, crop: int = 336, out: torch.Tensor | None = None) -> torch.Tensor:
    """[global view, row-major local crops, zero crops] -> (num_crops + 1, 3, crop, crop), written into `out`."""
    _, h, w = hd.shape
    n_local = (h // crop) * (w // crop)
    out = torch.empty(num_crops + 1, 3, crop, crop) if out is None else out
    out[1 + n_local :].zero_()
    out[0] = F.interpolate(hd[None].float(), size=(crop, crop), mode="bicubic", align_corners=False)[0]
    local = hd.reshape(3, h // crop, crop, w // crop, crop).permute(1, 3, 0, 2, 4)
    out[1 : 1 + n_local] = local.reshape(n_local, 3, crop, crop)
    return out


@dataclass(frozen=True)
class Phi3VImageProcessor:
    num_crops: int = 4
    crop_size: int = 336
    patch_size: int = 14
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        check_num_crops(self.num_crops)

    def __call__(self, images: list[Image.Image]) -> dict:
        """-> pixel_values (n, num_crops+1, 3, crop, crop), image_sizes (n, 2) [H, W], num_img_tokens [n]."""
        pixel_values = torch.empty(len(images), self.num_crops + 1, 3, self.crop_size, self.crop_size)
        sizes, tokens = [], []
        for i, image in enumerate(images):
            hd = hd_tensor(image, self.num_crops, self.crop_size, self.image_mean, self.image_std)
            crops_of(hd, self.num_crops, self.crop_size, out=pixel_values[i])
            sizes.append([hd.shape[1], hd.shape[2]])
            tokens.append(tokens_for_hd_size(hd.shape[1], hd.shape[2], self.crop_size, self.patch_size))
        return {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "num_img_tokens": tokens,
        }
