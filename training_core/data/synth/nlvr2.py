"""NLVR2 twin: two pictures, one with few and one with many shapes (`counts`, by default 1 and 4), and a statement
about the pair answered True or False (balanced).

The first turn's statement always compares the left picture with the right one (in several wordings), so its
truth is "the left picture has more shapes". Half the records add the mirrored statement as a follow-up turn
without images, as the Cauldron's multi-turn NLVR2 records do.

Why not a random choice of "left has more" / "right has more" in the first turn: the answer would then be the XOR
of the statement's side and the pictures, with no single cue that correlates with it. The tiny model sat at chance
on that variant for long plateaus whose length depended on the strategy and the seed (full fine-tuning at lr 3e-3
never left it in 15-30 epochs; frozen vision did after ~10). With the fixed side the answer still needs both
pictures; frozen vision learns it in ~4 epochs, full fine-tuning at lr 3e-4 (the tiny profile's patch) within 15,
while at 3e-3 it still stays at chance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .twin import COLOURS, Example, Twin, draw_shape

LEFT_MORE = (  # every wording is true exactly when the left picture has more shapes
    "The left image contains more shapes than the right image.",
    "The right image contains fewer shapes than the left image.",
    "There are more shapes in the left picture than in the right one.",
)
RIGHT_MORE = "The right image contains more shapes than the left image."
QUESTION = "{statement}\nIs this statement true or false?"


@dataclass
class NLVR2Twin(Twin):
    version = 2  # 2: the first turn always states "left has more" (1 chose the side at random: an XOR)
    size: tuple[int, int] = (240, 160)
    counts: tuple[int, ...] = (1, 4)  # shapes per picture; far apart, so that a tiny model can learn the comparison
    source = "nlvr2_synth"

    def example(self, rng: random.Random, index: int, split: str) -> Example:
        want = index % 2 == 0  # balanced True / False
        while True:  # the two pictures always differ in count, so every statement is decidable
            left, right = rng.choice(self.counts), rng.choice(self.counts)
            if left != right and (left > right) == want:
                break
        images = (self._picture(rng, left), self._picture(rng, right))
        turns = [(images, QUESTION.format(statement=rng.choice(LEFT_MORE)), str(want), (str(want),))]
        if rng.random() < 0.5:
            answer = str(right > left)
            turns.append(((), QUESTION.format(statement=RIGHT_MORE), answer, (answer,)))
        return Example(tuple(turns))

    def _picture(self, rng: random.Random, count: int) -> Image.Image:
        w, h = self.size
        image = Image.new("RGB", (w, h), (245, 245, 235))
        draw = ImageDraw.Draw(image)
        cell = w // 4
        for slot in rng.sample(range(8), count):  # 4x2 grid of slots, no overlaps
            x, y = (slot % 4) * cell, (slot // 4) * (h // 2)
            s = rng.randrange(int(cell * 0.5), int(cell * 0.85))
            colour = COLOURS[rng.choice(("red", "green", "blue", "orange", "purple"))]
            draw_shape(draw, rng.choice(("circle", "square")), (x + 4, y + 4, x + 4 + s, y + 4 + s), colour)
        return image
