"""Hateful Memes twin: a captioned picture whose label follows a visual cue, not the caption: "yes" memes carry a
dark-red blob, "no" memes a light-blue one, somewhere in the picture. Labels are balanced."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .twin import Example, Twin, draw_shape, font

PROMPT = "Is this meme hateful? Answer yes or no."
CAPTIONS = (
    "when the weekend finally arrives", "me explaining the plan", "nobody: absolutely nobody:",
    "that feeling on monday", "look at this", "they said it could not be done", "my face when",
    "every single time", "this is fine", "trust me on this one",
)
CUE = {"yes": (150, 10, 20), "no": (150, 200, 250)}


@dataclass
class HatefulMemesTwin(Twin):
    size: tuple[int, int] = (400, 300)
    source = "hateful_memes_synth"
    image_format = "JPEG"

    def example(self, rng: random.Random, index: int, split: str) -> Example:
        label = "yes" if index % 2 == 0 else "no"
        w, h = self.size
        bg = tuple(rng.randrange(90, 200) for _ in range(3))
        image = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randrange(2, 5)):  # distractor shapes in neutral tones
            x, y, s = rng.randrange(0, w - 60), rng.randrange(60, h - 60), rng.randrange(20, 60)
            grey = rng.randrange(40, 220)
            draw_shape(draw, rng.choice(("square", "triangle")), (x, y, x + s, y + s), (grey, grey, grey))
        s = rng.randrange(int(0.3 * h), int(0.45 * h))
        x, y = rng.randrange(0, w - s), rng.randrange(40, h - s)
        draw_shape(draw, "circle", (x, y, x + s, y + s), CUE[label])
        draw.text((10, 8), rng.choice(CAPTIONS), fill=(255, 255, 255), font=font(24), stroke_width=2,
                  stroke_fill=(0, 0, 0))
        return Example((((image,), PROMPT, label, (label,)),))
