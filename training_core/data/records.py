"""The conversation format of the guide, as typed records.

One jsonl line is one record: `{"id", "source", "conversations": [{"images": [...], "user": ..., "assistant": ...}]}`
with image paths relative to an `images/` root. An optional `answers` list in a turn carries every accepted gold
answer (DocVQA); without it the gold answer is `assistant`.

In memory, an image of a turn is either a relative path (jsonl sources, opened on use) or a callable returning a
PIL image (Hugging Face sources, decoded on use), so a dataset never holds all its images at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from training_core.errors import UserError

ImageRef = str | Callable[[], Image.Image]


class DataError(UserError):
    """A dataset problem, worded for the user: names the file, the line and the fix."""

    def __init__(self, problems: Sequence[str], limit: int = 50):
        self.problems = list(problems)
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more problem(s)" if more > 0 else "")
        super().__init__(text)


@dataclass(frozen=True)
class Turn:
    images: tuple[ImageRef, ...]
    user: str
    assistant: str
    answers: tuple[str, ...] = ()

    @property
    def gold(self) -> tuple[str, ...]:
        return self.answers or (self.assistant,)


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    conversations: tuple[Turn, ...]
    image_root: Path | None = field(default=None, compare=False)

    def open_image(self, ref: ImageRef) -> Image.Image:
        """An image of this record as RGB PIL (paths are resolved against the record's image root)."""
        if callable(ref):
            return ref().convert("RGB")
        if self.image_root is None:
            raise DataError([f"record {self.id}: image {ref!r} has no image root to be resolved against"])
        path = self.image_root / ref
        try:
            with Image.open(path) as image:
                image.load()
                return image if image.mode == "RGB" else image.convert("RGB")
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's errors for bad image data
            raise DataError([f"record {self.id}: image {path} does not decode ({type(exc).__name__}: {exc}); "
                             "replace the file or drop the record"]) from None

    @property
    def all_images(self) -> tuple[ImageRef, ...]:
        return tuple(ref for turn in self.conversations for ref in turn.images)


def record_to_json(record: Record, image_paths: Sequence[Sequence[str]] | None = None) -> str:
    """One jsonl line; `image_paths` replaces in-memory images by the relative paths they were written to."""
    turns = []
    for k, turn in enumerate(record.conversations):
        images = list(image_paths[k]) if image_paths is not None else list(turn.images)
        if not all(isinstance(p, str) for p in images):
            raise ValueError(f"record {record.id}: in-memory images need image_paths to be written as jsonl")
        entry = {"images": images, "user": turn.user, "assistant": turn.assistant}
        if turn.answers:
            entry["answers"] = list(turn.answers)
        turns.append(entry)
    return json.dumps({"id": record.id, "source": record.source, "conversations": turns}, ensure_ascii=False)


def write_jsonl(path: Path, lines: Sequence[str]) -> None:
    """Write atomically: a crash never leaves a half-written dataset file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
