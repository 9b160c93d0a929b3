"""The common machinery of a synthetic twin: seeded generation per split, image files, jsonl output."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..records import DataError, Record, Turn, record_to_json, write_jsonl

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 20),
    "purple": (140, 40, 180), "orange": (245, 130, 20), "cyan": (20, 200, 210), "pink": (245, 120, 190),
    "brown": (130, 80, 30), "black": (20, 20, 20),
}


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "diamond":
        draw.polygon([((x0 + x1) // 2, y0), (x1, (y0 + y1) // 2), ((x0 + x1) // 2, y1), (x0, (y0 + y1) // 2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


@dataclass(frozen=True)
class Example:
    """One generated record before it is written: per turn the images, the user text and the answer(s)."""

    turns: tuple[tuple[tuple[Image.Image, ...], str, str, tuple[str, ...]], ...]


class Twin:
    # Bump when what a twin generates changes (records, answers or images): the version is part of the run_id of
    # every cell on this twin, so rows measured on the old data are not mistaken for the new (tests pin a
    # fingerprint of each twin's output to its version).
    version = 1
    source = "synthetic"
    split_names = {"train": "train", "eval": "eval"}
    jsonl_names = {"train": "train.jsonl", "eval": "eval.jsonl"}
    image_format = "PNG"

    def example(self, rng: random.Random, index: int, split: str) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError

    def record_id(self, split: str, index: int, global_index: int) -> str:
        return f"{self.split_names[split]}-{index:06d}"

    def image_path(self, split: str, record_id: str, turn: int, k: int, example: Example) -> str:
        ext = "jpg" if self.image_format == "JPEG" else "png"
        return f"{self.split_names[split]}/{record_id}_{turn}_{k}.{ext}"

    def write(self, out_dir: Path, *, n_train: int, n_eval: int, seed: int, overwrite: bool = False) -> dict[str, int]:
        if n_train < 0 or n_eval < 0:
            raise DataError([f"n_train and n_eval must be >= 0, got {n_train} and {n_eval}"])
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise DataError([f"{out_dir}: is a file; --out names a directory for the jsonl files and images/"])
        targets = [out_dir / self.jsonl_names[s] for s in ("train", "eval")]
        image_dirs = [out_dir / "images" / self.split_names[s] for s in ("train", "eval")]
        existing = [t for t in targets if t.exists()] + [d for d in image_dirs if d.is_dir() and any(d.iterdir())]
        if existing and not overwrite:
            raise DataError([f"{existing[0]} exists: choose another --out or pass --overwrite"])
        for folder in image_dirs:  # --overwrite: the earlier twin's images go (none is left beside the new ones)
            if folder.is_symlink():
                raise DataError([f"{folder}: is a symbolic link; remove it (nothing is written through a link)"])
            if folder.is_dir():
                shutil.rmtree(folder)
        counts, global_index = {}, 0
        for split, n in (("train", n_train), ("eval", n_eval)):
            rng = random.Random(f"{seed}:{split}")
            lines = []
            for index in range(n):
                example = self.example(rng, index, split)
                record_id = self.record_id(split, index, global_index)
                lines.append(self._save(out_dir, split, record_id, example))
                global_index += 1
            write_jsonl(out_dir / self.jsonl_names[split], lines)
            counts[split] = n
        return counts

    def _save(self, out_dir: Path, split: str, record_id: str, example: Example) -> str:
        turns, paths = [], []
        for t, (images, user, answer, answers) in enumerate(example.turns):
            rels = []
            for k, image in enumerate(images):
                rel = self.image_path(split, record_id, t, k, example)
                (out_dir / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                image.save(out_dir / "images" / rel, format=self.image_format)
                rels.append(rel)
            paths.append(rels)
            turns.append(Turn(tuple(rels), user, answer, answers if tuple(answers) != (answer,) else ()))
        return record_to_json(Record(record_id, self.source, tuple(turns)))
