"""Synthetic twins of the four tasks: deterministic by seed, in the conversation format with real image files, and
with answers that follow from the image, so a tiny model can show that images reach the language model.

`synthesize(task, out_dir, n_train, n_eval, seed)` writes `images/`, `train.jsonl` and `eval.jsonl` (UCF-101:
`ucf101_train.jsonl` and `ucf101_val.jsonl`, the converter's layout).
"""

from __future__ import annotations

from pathlib import Path

from ..records import DataError
from .docvqa import DocVQATwin
from .hateful_memes import HatefulMemesTwin
from .nlvr2 import NLVR2Twin
from .twin import Twin
from .ucf101 import UCF101Twin

TWINS: dict[str, type[Twin]] = {
    "docvqa": DocVQATwin,
    "docvqa_full": DocVQATwin,
    "hateful_memes": HatefulMemesTwin,
    "nlvr2": NLVR2Twin,
    "ucf101": UCF101Twin,
}


def twin_version(task: str) -> str:
    """What identifies the data a synthetic cell trains on: the twin and its generator version."""
    if task not in TWINS:
        raise DataError([f"no synthetic twin for task {task!r}; choose one of {sorted(TWINS)}"])
    twin = TWINS[task]
    return f"{twin.__name__}-v{twin.version}"


def synthesize(
    task: str, out_dir: str | Path, *, n_train: int, n_eval: int, seed: int = 0, overwrite: bool = False, **options
) -> dict[str, int]:
    if task not in TWINS:
        raise DataError([f"no synthetic twin for task {task!r}; choose one of {sorted(TWINS)}"])
    return TWINS[task](**options).write(Path(out_dir), n_train=n_train, n_eval=n_eval, seed=seed, overwrite=overwrite)


__all__ = ["TWINS", "synthesize", "twin_version"]
