"""Hugging Face layouts (DocVQA mini, the Cauldron) -> conversation-format jsonl with image files."""

from __future__ import annotations

from pathlib import Path

from training_core.tasks import get_task

from ..records import DataError, record_to_json, write_jsonl
from ..sources import find_jsonl, load_records
from .staging import move_into_place, staging


def _save(image, directory: Path, stem: str) -> str:
    fmt = (getattr(image, "format", None) or "PNG").upper()
    ext = {"JPEG": "jpg", "PNG": "png"}.get(fmt, "png")
    path = directory / f"{stem}.{ext}"
    image.save(path, format="JPEG" if ext == "jpg" else "PNG")
    return path.name


def _decoded(ref, where: str):
    """The image, decoded in full here (a truncated file, bytes that are no image, a 100000x100000 header: PIL's
    decompression-bomb bound), so that a bad one is named, not a traceback or a write error."""
    from PIL import Image

    try:
        image = ref()
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError([f"{where}: does not decode as an image ({type(exc).__name__}: {exc})"]) from None
    return image


def convert_hf(
    task_name: str, out_dir: str | Path, *, data_dir: str | Path | None = None, limit: int | None = None,
    overwrite: bool = False, allow_download: bool = False,
) -> dict[str, int]:
    """Write `{out_dir}/{split}.jsonl` and `{out_dir}/images/{split}/...` for the task's train and eval splits, moved
    into place only when both converted (staging.py)."""
    task = get_task(task_name)
    if not task.hf_sources:
        raise DataError([f"task {task_name} has no Hugging Face layout to convert from"])
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise DataError([f"--limit {limit!r}: give a whole number of records >= 1 (0 would write empty splits)"])
    out_dir = Path(out_dir)
    if data_dir is not None and Path(data_dir).is_dir() and any(
            find_jsonl(task, split, Path(data_dir)) for split in ("train", "eval")):
        raise DataError([f"--data-dir {data_dir}: already conversation-format jsonl (a converted dataset or a "
                         "synthetic twin): pass it as DATA=DIR as it is; nothing to convert"])
    for split in ("train", "eval"):
        if (out_dir / f"{split}.jsonl").exists() and not overwrite:
            raise DataError([f"{out_dir / f'{split}.jsonl'} exists: choose another --out or pass --overwrite"])
    counts = {}
    with staging(out_dir, task_name) as folder:
        for split in ("train", "eval"):
            records = load_records(task, split, data_dir, limit=limit, allow_download=allow_download)
            image_dir = folder / "images" / split
            image_dir.mkdir(parents=True, exist_ok=True)
            lines = []
            for n, record in enumerate(records):
                paths = []
                for k, turn in enumerate(record.conversations):
                    where = f"{task_name} {split} record {n} ({record.id})"
                    names = [_save(_decoded(ref, f"{where} image {j + 1}"), image_dir, f"{n:07d}_{k}_{j}")
                             for j, ref in enumerate(turn.images)]
                    paths.append([f"{split}/{name}" for name in names])
                lines.append(record_to_json(record, paths))
            write_jsonl(folder / f"{split}.jsonl", lines)
            counts[split] = len(lines)
        move_into_place(folder, out_dir, [f"{split}.jsonl" for split in counts], [f"images/{s}" for s in counts])
    return counts
