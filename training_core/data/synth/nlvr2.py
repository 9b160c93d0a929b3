"""NLVR2 twin: two pictures, one with few and one with many shapes (`counts`, by default 1 and 4); each statement
says which picture has more shapes and is answered True or False (balanced). Half the records carry a second statement as a follow-up turn
without images, as the Cauldron's multi-turn NLVR2 records do."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .twin import COLOURS, Example, Twin, draw_shape

STATEMENTS = {
    "left_more": "The left image contains more shapes than the right image.",
    "right_more": "The right image contains more shapes than the left image.",
}
QUESTION = "{statement}\nIs this statement true or false?"


def truth(kind: str, left: int, right: int) -> bool:
    return {"left_more": left > right, "right_more": right > left}[kind]


@dataclass
class NLVR2Twin(Twin):
    size: tuple[int, int] = (240, 160)
    counts: tuple[int, ...] = (1, 4)  # shapes per picture; far apart, so that a tiny model can learn the comparison
    source = "nlvr2_synth"

    def example(self, rng: random.Random, index: int, split: str) -> Example:
        kind = rng.choice(sorted(STATEMENTS))
        want = rng.random() < 0.5
        while True:  # the two pictures always differ in count, so every statement is decidable
            left, right = rng.choice(self.counts), rng.choice(self.counts)
            if left != right and truth(kind, left, right) == want:
                break
        images = (self._picture(rng, left), self._picture(rng, right))
        turns = [(images, QUESTION.format(statement=STATEMENTS[kind]), str(want), (str(want),))]
        if rng.random() < 0.5:
            other = rng.choice([k for k in sorted(STATEMENTS) if k != kind])
            answer = str(truth(other, left, right))
            turns.append(((), QUESTION.format(statement=STATEMENTS[other]), answer, (answer,)))
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
