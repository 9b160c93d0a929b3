"""Hugging Face sources the recipe names, read from the local cache or a local directory (never downloaded unless
the caller allows it), presented as lazily decoded `Record`s."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from training_core.tasks.spec import HFSource

from .records import DataError, Record, Turn

_SPLIT = re.compile(r"^(?P<base>[\w-]+)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def parse_split(split: str) -> tuple[str, slice]:
    match = _SPLIT.match(split)
    if not match:
        raise DataError([f"split {split!r}: expected NAME or NAME[start:stop], e.g. 'train[500:]'"])
    to_int = lambda s: int(s) if s else None  # noqa: E731
    return match["base"], slice(to_int(match["start"]), to_int(match["stop"]))


@contextmanager
def hub_offline():
    """Force the datasets / hub libraries offline for the duration (cache only)."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE,
             os.environ.get("HF_HUB_OFFLINE"))
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE, env = saved
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def _how_to_get(src: HFSource) -> str:
    config = f", {src.config!r}" if src.config else ""
    return (
        f"on a machine with internet access run: python -c \"import datasets; datasets.load_dataset({src.name!r}{config})\" "
        "(it fills the Hugging Face cache; copy the cache dir and set HF_HOME), or save the dataset with "
        "Dataset.save_to_disk(DIR) / download its parquet files into DIR and pass that directory as the data source"
    )


def load_hf_split(src: HFSource, data_dir: str | Path | None = None, *, allow_download: bool = False):
    """The `datasets.Dataset` of one split (slice applied), from a local directory or the local cache."""
    import datasets

    base, part = parse_split(src.split)
    try:
        if data_dir is not None:
            ds = _from_directory(Path(data_dir), base)
        elif allow_download:
            ds = datasets.load_dataset(src.name, src.config, split=base)
        else:
            with hub_offline():
                ds = datasets.load_dataset(src.name, src.config, split=base)
    except DataError:
        raise
    except Exception as exc:  # the datasets library raises many kinds; all mean "not available here"
        where = f"directory {data_dir}" if data_dir else "the local Hugging Face cache"
        raise DataError([
            f"dataset {src.name}{'/' + src.config if src.config else ''} split {base!r} could not be read from "
            f"{where} ({type(exc).__name__}: {str(exc)[:200]}); {_how_to_get(src)}"
        ]) from exc
    indices = range(len(ds))[part]
    return ds if len(indices) == len(ds) else ds.select(indices)


def _from_directory(directory: Path, split: str):
    import datasets

    if directory.exists() and not directory.is_dir():
        raise DataError([f"{directory}: is a file, not a data directory (give a .jsonl file, a directory of them, or a "
                         "saved Hugging Face dataset)"])
    if not directory.is_dir():
        raise DataError([f"{directory}: no such data directory"])
    if (directory / "dataset_dict.json").exists() or (directory / "state.json").exists():
        loaded = datasets.load_from_disk(str(directory))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError([f"{directory}: saved dataset has splits {sorted(loaded)}, not {split!r}"])
            return loaded[split]
        return loaded
    files = sorted(str(p) for p in directory.rglob("*.parquet") if p.name.startswith(split))
    if not files:
        raise DataError([f"{directory}: neither a save_to_disk dataset nor parquet files named {split}-*.parquet"])
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)


def _image_getter(image):
    return lambda: image


def docvqa_mini_record(row: dict, index: int) -> Record:
    """`nielsr/docvqa_1200_examples`: image, query (English text at query['en']), answers (list)."""
    question = row["query"]["en"] if isinstance(row["query"], dict) else row["query"]
    answers = tuple(row["answers"])
    if not answers:
        raise DataError([f"docvqa row {index} (id {row.get('id')}): no gold answers"])
    turn = Turn((_image_getter(row["image"]),), question, answers[0], answers)
    return Record(str(row.get("id", index)), "docvqa", (turn,))


def cauldron_record(row: dict, index: int, source: str) -> Record:
    """The Cauldron: `images` (list) and `texts` (list of {user, assistant}); the images go with the first turn."""
    texts = row["texts"]
    if not texts:
        raise DataError([f"{source} row {index}: no QA pairs in 'texts'"])
    for k, text in enumerate(texts):
        if not isinstance(text, dict) or not all(isinstance(text.get(key), str) for key in ("user", "assistant")):
            raise DataError([f"{source} row {index}: texts[{k}] lacks a 'user' and an 'assistant' string (the "
                             "Cauldron layout: texts = [{user, assistant}, ...])"])
    if not isinstance(row["images"], (list, tuple)):
        raise DataError([f"{source} row {index}: 'images' is not a list"])
    images = tuple(_image_getter(im) for im in row["images"])
    turns = tuple(
        Turn(images if k == 0 else (), t["user"], t["assistant"]) for k, t in enumerate(texts)
    )
    return Record(f"{source}-{index:010d}", source, turns)


class HFRecords(Sequence):
    """Records over a `datasets.Dataset`; a row (and its images) is decoded only when it is used."""

    def __init__(self, dataset, layout: str, source: str):
        self.dataset, self.layout, self.source = dataset, layout, source
        needed = {"docvqa_mini": {"image", "query", "answers"}, "cauldron": {"images", "texts"}}[layout]
        missing = needed - set(dataset.column_names)
        if missing:
            raise DataError([f"{source}: the dataset lacks column(s) {sorted(missing)} of the {layout} layout"])

    def __len__(self) -> int:
        return len(self.dataset)

    def head(self, n: int) -> HFRecords:
        return HFRecords(self.dataset.select(range(min(n, len(self.dataset)))), self.layout, self.source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(index)  # how iteration over a Sequence ends
        try:
            row = self.dataset[index]  # decodes the row's images: bytes that are no image fail here
        except Exception as exc:  # PIL's and the datasets library's many error types: all mean this row is bad
            raise DataError([f"{self.source} row {index}: cannot be read ({type(exc).__name__}: "
                             f"{str(exc)[:200]})"]) from None
        if self.layout == "docvqa_mini":
            return docvqa_mini_record(row, index)
        return cauldron_record(row, index, self.source)
