"""Hugging Face layouts (DocVQA mini, the Cauldron) -> conversation-format jsonl with image files."""

from __future__ import annotations

from pathlib import Path

from training_core.tasks import get_task

from ..records import DataError, record_to_json, write_jsonl
from ..sources import load_records


def _save(image, directory: Path, stem: str) -> str:
    fmt = (getattr(image, "format", None) or "PNG").upper()
    ext = {"JPEG": "jpg", "PNG": "png"}.get(fmt, "png")
    path = directory / f"{stem}.{ext}"
    image.save(path, format="JPEG" if ext == "jpg" else "PNG")
    return path.name


def convert_hf(
    task_name: str, out_dir: str | Path, *, data_dir: str | Path | None = None, limit: int | None = None,
    overwrite: bool = False, allow_download: bool = False,
) -> dict[str, int]:
    """Write `{out_dir}/{split}.jsonl` and `{out_dir}/images/{split}/...` for the task's train and eval splits."""
    task = get_task(task_name)
    if not task.hf_sources:
        raise DataError([f"task {task_name} has no Hugging Face layout to convert from"])
    out_dir = Path(out_dir)
    counts = {}
    for split in ("train", "eval"):
        target = out_dir / f"{split}.jsonl"
        if target.exists() and not overwrite:
            raise DataError([f"{target} exists: choose another --out or pass --overwrite"])
        records = load_records(task, split, data_dir, limit=limit, allow_download=allow_download)
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for n, record in enumerate(records):
            paths = []
            for k, turn in enumerate(record.conversations):
                names = [_save(ref(), image_dir, f"{n:07d}_{k}_{j}") for j, ref in enumerate(turn.images)]
                paths.append([f"{split}/{name}" for name in names])
            lines.append(record_to_json(record, paths))
        write_jsonl(target, lines)
        counts[split] = len(lines)
    return counts
