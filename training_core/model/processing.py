"""`Phi3VProcessor`: the text side of the official processor plus the HD image transform.

A prompt's `<|image_N|>` tags must number the images 1..n, each once, in order, and n must equal the number of
images given. The prompt is split on the tags; every text chunk is tokenised on its own with the tokenizer's
special tokens (so each chunk starts with its own BOS, as the official processor does), and each tag becomes a
run of `-N` placeholder ids whose length is the image's token count. The model replaces the placeholders with
image features in order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer

from training_core.errors import UserError
from training_core.files import read_text

from .geometry import check_num_crops
from .image_processing import CLIP_MEAN, CLIP_STD, Phi3VImageProcessor
from .image_tags import IMAGE_TAG, parse_image_tags
from .weights import MAX_CONFIG_BYTES

PREPROCESSOR_FILE = "preprocessor_config.json"


class ProcessorConfigError(UserError, ValueError):
    """A preprocessor_config.json that is not read (bad sizes, unreadable), naming the file and key."""


def read_preprocessor_config(path: Path) -> dict:
    """The preprocessor config's values, bounded: num_crops as everywhere (1..MAX_CROPS; 10^6 would make a million
    crops per image), crop and patch sizes that tile, three finite means and standard deviations."""
    if not path.exists():
        return {}
    try:
        cfg = json.loads(read_text(path, "preprocessor config", limit=MAX_CONFIG_BYTES))
    except ValueError as exc:
        raise ProcessorConfigError(f"{path}: not JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ProcessorConfigError(f"{path}: not a JSON object")
    if "num_crops" in cfg:
        try:
            check_num_crops(cfg["num_crops"])
        except ValueError as exc:
            raise ProcessorConfigError(f"{path}: {exc}") from None
    crop, patch = cfg.get("crop_size", 336), cfg.get("patch_size", 14)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (crop, patch)) \
            or not 0 < patch <= crop <= 4096 or crop % patch:
        raise ProcessorConfigError(f"{path}: crop_size {crop!r} and patch_size {patch!r} must be whole numbers, the "
                                   "crop a multiple of the patch, at most 4096 (the recipe: 336 and 14)")
    for key in ("image_mean", "image_std"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise ProcessorConfigError(f"{path}: {key} must be three finite numbers (one per RGB channel)")
    if any(v <= 0 for v in cfg.get("image_std") or ()):
        raise ProcessorConfigError(f"{path}: image_std must be positive (it divides the pixels)")
    return cfg


class Phi3VProcessor:
    def __init__(self, tokenizer, image_processor: Phi3VImageProcessor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    # ----------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, directory: str | Path, num_crops: int | None = None) -> Phi3VProcessor:
        directory = Path(directory)
        cfg = read_preprocessor_config(directory / PREPROCESSOR_FILE)
        image_processor = Phi3VImageProcessor(
            num_crops=int(num_crops if num_crops is not None else cfg.get("num_crops", 4)),
            crop_size=int(cfg.get("crop_size", 336)),
            patch_size=int(cfg.get("patch_size", 14)),
            image_mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", CLIP_STD)),
        )
        return cls(AutoTokenizer.from_pretrained(str(directory)), image_processor)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ip = self.image_processor
        g = ip.crop_size // ip.patch_size // 2
        cfg = {
            "image_processor_type": "Phi3VImageProcessor",
            "processor_class": "Phi3VProcessor",
            "do_convert_rgb": True,
            "num_crops": ip.num_crops,
            "num_img_tokens": g * g,
            "image_mean": list(ip.image_mean),
            "image_std": list(ip.image_std),
            "crop_size": ip.crop_size,
            "patch_size": ip.patch_size,
        }
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        self.tokenizer.save_pretrained(str(directory))

    # ----------------------------------------------------------------- text
    def chat_prompt(self, user: str) -> str:
        """One user turn rendered with the chat template and the generation prompt (the recipe's prompt form)."""
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def __call__(self, text: str, images: list[Image.Image] | None = None) -> dict:
        if not isinstance(text, str):
            raise ValueError("Phi3VProcessor takes one prompt string per call (batching is the collator's job)")
        images = list(images or [])
        tags = parse_image_tags(text, len(images))
        if not images:
            ids = self.tokenizer(text).input_ids
            return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        vision = self.image_processor(images)
        chunks = [self.tokenizer(chunk).input_ids for chunk in IMAGE_TAG.split(text)[:: 2]]
        ids: list[int] = list(chunks[0])
        for tag, chunk in zip(tags, chunks[1:], strict=True):
            ids += [-tag] * vision["num_img_tokens"][tag - 1]
            ids += chunk
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": vision["pixel_values"],
            "image_sizes": vision["image_sizes"],
        }

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False, **kwargs)
