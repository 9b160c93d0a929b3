"""DocVQA twin: document pages with a coloured header band, a document-type title and icon, a numbered box and
filler text lines. Questions ask for the header colour, the document type or the number in the box.

Shape: 80% US-letter pages (1700x2200 at scale 1) and 20% A4 pages (1654x2339). At num_crops 16 a letter page
becomes 4x4 crops (2509 image tokens) and an A4 page 3x4 (1933), so with the prompt and answer the mean sequence
length is close to the documented 2443.23 tokens of the real mini DocVQA set. `page_scale` shrinks the files
(the HD transform rescales every page to the same crop grid, so token counts do not change).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .twin import COLOURS, Example, Twin, draw_shape, font

HEADER_COLOURS = ("red", "green", "blue", "orange", "purple", "black")
DOC_TYPES = {"invoice": "square", "letter": "circle", "report": "triangle", "form": "diamond"}
WORDS = "total amount date account customer page order item price quantity address phone note tax".split()
PAGES = ((1700, 2200, 0.8), (1654, 2339, 0.2))  # width, height, share


@dataclass
class DocVQATwin(Twin):
    page_scale: float = 0.5
    source = "docvqa_synth"

    def example(self, rng: random.Random, index: int, split: str) -> Example:
        w, h = PAGES[0][:2] if rng.random() < PAGES[0][2] else PAGES[1][:2]
        w, h = int(w * self.page_scale), int(h * self.page_scale)
        colour = rng.choice(HEADER_COLOURS)
        doc_type = rng.choice(sorted(DOC_TYPES))
        number = f"{rng.randrange(1000, 10000)}"
        page = self._page(rng, w, h, colour, doc_type, number)
        kind = rng.choices(("colour", "type", "number"), weights=(2, 1, 1))[0]
        question, answer = {
            "colour": ("What is the colour of the header?", colour),
            "type": ("What type of document is this?", doc_type),
            "number": ("What is the number in the box?", number),
        }[kind]
        return Example((((page,), question, answer, (answer,)),))

    def _page(self, rng, w, h, colour, doc_type, number) -> Image.Image:
        page = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        unit = w / 100
        draw.rectangle((0, 0, w, int(9 * unit)), fill=COLOURS[colour])
        draw.text((int(6 * unit), int(12 * unit)), doc_type.upper(), fill=(0, 0, 0), font=font(int(7 * unit)))
        icon = (int(78 * unit), int(11 * unit), int(94 * unit), int(27 * unit))
        draw_shape(draw, DOC_TYPES[doc_type], icon, (40, 40, 40))
        box = (int(6 * unit), int(24 * unit), int(46 * unit), int(36 * unit))
        draw.rectangle(box, outline=(0, 0, 0), width=max(1, int(0.5 * unit)))
        draw.text((box[0] + int(3 * unit), box[1] + int(2 * unit)), number, fill=(0, 0, 0), font=font(int(7 * unit)))
        small = font(max(8, int(2.2 * unit)))
        y = int(42 * unit)
        while y < h - 6 * unit:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 10)))
            draw.text((int(6 * unit), y), f"{line}: {rng.randrange(1, 999)}", fill=(60, 60, 60), font=small)
            y += int(rng.uniform(3.2, 5.0) * unit)
        return page
