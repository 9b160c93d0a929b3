"""Check a grid's inputs before running it: a missing checkpoint or dataset is one clear message up front (what to
download and where to put it), not a failed row per cell."""

from __future__ import annotations

from pathlib import Path

from training_core.data.records import DataError
from training_core.model.presets import PRESETS

from .cells import Cell

CHECKPOINTS = {
    "docvqa_full": "microsoft/Phi-3-vision-128k-instruct (the guide's DocVQA numbers are Phi-3-vision's)",
    "hateful_memes": "microsoft/Phi-3-vision-128k-instruct (the guide's Hateful Memes numbers are Phi-3-vision's)",
}
DEFAULT_CHECKPOINT = "microsoft/Phi-3.5-vision-instruct"


def missing_inputs(cells: list[Cell]) -> list[str]:
    problems: dict[str, None] = {}
    for cell in cells:
        spec = cell.spec
        if spec.model not in PRESETS and not (Path(spec.model) / "config.json").is_file():
            hub = CHECKPOINTS.get(spec.task, DEFAULT_CHECKPOINT)
            problems[(f"checkpoint {spec.model!r} not found (no config.json): download {hub} into a local "
                      f"directory (e.g. `huggingface-cli download <repo> --local-dir DIR` on a machine with "
                      f"internet) and pass MODEL=DIR")] = None
        elif spec.model not in PRESETS:
            problems.update(dict.fromkeys(_model_problems(Path(spec.model))))
        if spec.data not in ("synthetic", "hf") and not Path(spec.data).exists():
            hint = ("convert the UCF-101 subset first: python -m harness data convert ucf101 --src "
                    "UCF101_subset.tar.gz --out DIR" if spec.task == "ucf101" else "pass DATA=DIR with the dataset")
            problems[f"data {spec.data!r} not found: {hint}"] = None
        elif spec.data == "hf":
            problems.update(dict.fromkeys(_hf_problems(spec.task)))
        elif spec.data != "synthetic":
            problems.update(dict.fromkeys(_source_problems(spec.task, Path(spec.data))))
    return list(problems)


def check_models(cells: list[Cell]) -> None:
    """`estimate` and `plan --estimate`: the checkpoint directories' configs, checked before any cell is estimated (a
    tampered one is one error up front, exit 2, not a failed prediction per cell)."""
    from training_core.errors import UserError

    problems: dict[str, None] = {}
    for cell in cells:
        if cell.runnable and cell.spec.model not in PRESETS and (Path(cell.spec.model) / "config.json").is_file():
            problems.update(dict.fromkeys(_model_problems(Path(cell.spec.model))))
    if problems:
        raise UserError("; ".join(problems))


def _model_problems(directory: Path) -> list[str]:
    """A checkpoint directory's config.json within the bounds every config read checks (a million layers, nested in
    img_processor.vision_config too, passed here and then allocated until the machine ran out of memory)."""
    from training_core.model.weights import WeightsError, read_config

    try:
        read_config(directory)
    except WeightsError as exc:
        return [f"model {str(directory)!r}: {exc}"]
    return []


def _source_problems(task_name: str, path: Path) -> list[str]:
    """A data path that exists but holds no records of the task (a file such as /etc/hostname, an empty
    directory): the loader is asked for the first training record, as a cell would."""
    from training_core.data.sources import load_records
    from training_core.tasks import get_task

    try:
        load_records(get_task(task_name), "train", path, limit=1)
    except DataError as exc:
        return [f"data {str(path)!r}: {exc}"]
    except (OSError, ValueError) as exc:
        return [f"data {str(path)!r}: no {task_name} records there ({type(exc).__name__}: {exc}); pass DATA=DIR "
                "with the dataset (a jsonl file, a directory of them, or the Hugging Face cache)"]
    return []


def _hf_problems(task_name: str) -> list[str]:
    from training_core.data.sources import load_records
    from training_core.tasks import get_task

    try:
        load_records(get_task(task_name), "eval", None, limit=1)
    except DataError as exc:
        return [str(exc)]
    return []
