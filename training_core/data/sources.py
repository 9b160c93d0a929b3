"""Where a task's records come from: a conversation-format jsonl (file or directory) or the task's Hugging Face
dataset (local cache or local directory). Every record is checked against the task before training starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training_core.tasks.spec import TaskSpec

from .hf import HFRecords, load_hf_split
from .jsonl import load_jsonl
from .records import DataError, Record

SPLITS = ("train", "eval")


def find_jsonl(task: TaskSpec, split: str, directory: Path) -> Path | None:
    for name in (task.jsonl_names.get(split), f"{split}.jsonl"):
        if name and (directory / name).is_file():
            return directory / name
    return None


def load_records(
    task: TaskSpec,
    split: str,
    source: str | Path | None = None,
    *,
    limit: int | None = None,
    allow_download: bool = False,
    num_crops: int | None = None,
) -> Sequence[Record]:
    """The records of `task`'s `split` ("train" or "eval") from `source` (see module doc); jsonl images are checked
    against the HD transform at `num_crops` (default: the task's)."""
    crops = num_crops or task.num_crops
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    path = Path(source) if source is not None else None
    if path is not None and path.suffix == ".jsonl":
        records = load_jsonl(path, num_crops=crops)
    elif path is not None and path.is_dir() and (found := find_jsonl(task, split, path)):
        records = load_jsonl(found, num_crops=crops)
    else:
        records = _hf_records(task, split, path, allow_download)
    if limit is not None:
        records = records.head(limit) if isinstance(records, HFRecords) else list(records[:limit])
    if isinstance(records, list):
        check_records(task, records)
        return records
    return CheckedRecords(records, task)


def _hf_records(task: TaskSpec, split: str, path: Path | None, allow_download: bool) -> Sequence[Record]:
    src = task.hf_sources.get(split)
    if src is None:
        where = f" in {path}" if path else ""
        names = " or ".join(filter(None, (task.jsonl_names.get(split), f"{split}.jsonl")))
        raise DataError([
            f"task {task.name}: no {names}{where}, and the task has no Hugging Face source; convert or synthesise "
            f"the data first (python -m harness data convert|synth {task.name} ...) and pass that directory"
        ])
    dataset = load_hf_split(src, path, allow_download=allow_download)
    return HFRecords(dataset, src.layout, task.name)


class CheckedRecords(Sequence):
    """A lazy source whose records are checked against the task as they are decoded."""

    def __init__(self, records: Sequence[Record], task: TaskSpec):
        self.records, self.task = records, task

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        record = self.records[index]
        problem = self.task.check_record(record)
        if problem:
            raise DataError([f"{self.task.name} row {index}: {problem}"])
        return record


def check_records(task: TaskSpec, records: Sequence[Record]) -> None:
    problems = [p for p in (task.check_record(r) for r in records) if p]
    if problems:
        raise DataError(problems)
