"""UCF-101 twin: 8-frame clips of a coloured square moving across a noisy background; the class (one of the
subset's 10 names) follows the square's colour, the direction of motion is a nuisance. Same layout, ids and prompt
as the converter: `images/{train,val}/{Class}/{video}.{k}.jpg`, `ucf101_{train,val}.jsonl`."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..convert.ucf101 import ucf101_prompt
from .twin import COLOURS, Example, Twin

CLASSES = ("ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
           "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress")
CLASS_COLOURS = dict(zip(CLASSES, COLOURS.values(), strict=True))


@dataclass
class UCF101Twin(Twin):
    size: tuple[int, int] = (128, 96)
    frames: int = 8
    source = "ucf101"
    split_names = {"train": "train", "eval": "val"}
    jsonl_names = {"train": "ucf101_train.jsonl", "eval": "ucf101_val.jsonl"}
    image_format = "JPEG"

    def example(self, rng: random.Random, index: int, split: str) -> Example:
        label = CLASSES[index % len(CLASSES)]
        w, h = self.size
        s = h // 3
        x0, y0 = rng.randrange(0, w - s), rng.randrange(0, h - s)
        x1, y1 = rng.randrange(0, w - s), rng.randrange(0, h - s)
        noise = np.random.default_rng(rng.randrange(1 << 30))
        frames = []
        for k in range(self.frames):
            t = k / (self.frames - 1)
            background = noise.normal(120, 24, (h, w, 1)).clip(0, 255).astype(np.uint8).repeat(3, axis=2)
            frame = Image.fromarray(background, "RGB")
            draw = ImageDraw.Draw(frame)
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            draw.rectangle((x, y, x + s, y + s), fill=CLASS_COLOURS[label])
            frames.append(frame)
        return Example(((tuple(frames), ucf101_prompt(list(CLASSES)), label, (label,)),))

    def record_id(self, split: str, index: int, global_index: int) -> str:
        return f"{self.split_names[split]}-{global_index:010d}"

    def image_path(self, split: str, record_id: str, turn: int, k: int, example: Example) -> str:
        label = example.turns[0][2]
        return f"{self.split_names[split]}/{label}/v_{label}_{record_id}.{k}.jpg"
