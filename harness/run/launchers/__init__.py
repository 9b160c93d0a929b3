"""Launchers: how a cell's processes start, are watched, end and become a row. One module each, behind the small
interface in `base.Launcher` (submit, poll, cancel, collect); the runner knows nothing else about them.

- `local`: torchrun on this machine (or one node of a multi-node static rendezvous), watched until it ends.
- `slurm`: one sbatch job per cell; a later run collects the jobs that have ended, checked against `sacct`.

A third launcher (Kubernetes, Ray, ...) is one more module with a `LAUNCHER` class and one more line in `NAMES`.
Names load lazily, so the CLI can list them without importing any launcher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Launcher

NAMES = {"local": "harness.run.launchers.local", "slurm": "harness.run.launchers.slurm"}


def get(name: str) -> type[Launcher]:
    if name not in NAMES:
        raise KeyError(f"unknown launcher {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(NAMES[name]).LAUNCHER
