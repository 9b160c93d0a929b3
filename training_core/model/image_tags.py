"""The `<|image_N|>` tags of a prompt (docs/RECIPE.md §2.3): the pattern and the check that they number the images
1..n in order. Plain `re`, so the data checks use it without importing the processor's tokenizer stack."""

from __future__ import annotations

import re

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


def parse_image_tags(text: str, num_images: int) -> list[int]:
    """The tag numbers in order; raises ValueError naming the problem when they do not match the images."""
    found = [int(n) for n in IMAGE_TAG.findall(text)]
    if len(found) != len(set(found)):
        dup = sorted({n for n in found if found.count(n) > 1})
        raise ValueError(f"image tag(s) {[f'<|image_{n}|>' for n in dup]} appear more than once; use each tag once")
    if found != sorted(found):
        raise ValueError(f"image tags appear out of order {found}; write <|image_1|> before <|image_2|> and so on")
    if found != list(range(1, len(found) + 1)):
        raise ValueError(f"image tags must be numbered 1..n without gaps, got {found}")
    if len(found) != num_images:
        raise ValueError(f"the prompt has {len(found)} image tag(s) but {num_images} image(s) were given")
    return found
