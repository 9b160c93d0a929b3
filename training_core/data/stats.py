"""Sequence-length statistics of a task's training examples, computed from image sizes (no HD transform needed).

The length of one example is what the training collator produces: per selected turn the chat-templated prompt
(every text chunk with its BOS) plus the image placeholder runs plus the answer with `<|end|>\n<|endoftext|>`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from training_core.model.geometry import num_image_tokens
from training_core.model.image_tags import IMAGE_TAG
from training_core.tasks.spec import TaskSpec

from .encode import answer_text
from .records import Record


def _image_size(record: Record, ref) -> tuple[int, int]:
    if callable(ref):
        return ref().size
    with Image.open(record.image_root / ref) as image:  # reads the header only
        return image.size


def example_length(task: TaskSpec, record: Record, tokenizer, chat_prompt, num_crops: int, crop_size: int,
                   patch_size: int, seed: int = 0) -> int:
    total = 0
    for turn in task.train_prompt_turns(record, random.Random(seed)):
        prompt = chat_prompt(turn.content)
        total += sum(len(tokenizer(chunk).input_ids) for chunk in IMAGE_TAG.split(prompt)[::2])
        for ref in turn.images:
            w, h = _image_size(record, ref)
            total += num_image_tokens(w, h, num_crops, crop_size=crop_size, patch_size=patch_size)
        total += len(tokenizer(answer_text(turn.answer), add_special_tokens=False).input_ids)
    return total


@dataclass(frozen=True)
class LengthStats:
    count: int
    mean: float
    minimum: int
    maximum: int


def sequence_length_stats(task: TaskSpec, records: Sequence[Record], processor, *, num_crops: int | None = None,
                          crop_size: int = 336, patch_size: int = 14) -> LengthStats:
    crops = num_crops or task.num_crops
    lengths = [
        example_length(task, r, processor.tokenizer, processor.chat_prompt, crops, crop_size, patch_size)
        for r in records
    ]
    return LengthStats(len(lengths), sum(lengths) / len(lengths), min(lengths), max(lengths))
