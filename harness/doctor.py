"""`python -m harness doctor` (`make doctor`): what this machine can do, before any grid, and what to install.

The probes themselves live in training_core/probes.py (they import torch, flash-attn, bitsandbytes, DeepSpeed). This
module adds the last table: every strategy x precision x attention of the shipped grids and whether a cell of it
runs here, asking `training_core.capabilities.unsupported_reason`, the same function a cell asks before it starts:
what doctor says will run, runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training_core.gpus import short_name

from .paths import MATRICES

if TYPE_CHECKING:
    from training_core.devices import Device


# ------------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Combination:
    strategy: str
    precision: str
    attention: str
    grids: tuple[str, ...]
    reasons: dict[str, tuple[str, ...]]  # why cells of it cannot run here -> the grids they are in; empty: all run

    @property
    def runs(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        if self.runs:
            return "runs"
        blocked = {g for grids in self.reasons.values() for g in grids}
        return "unsupported" if blocked == set(self.grids) else "some grids"


def combinations(device: Device, matrices: Path = MATRICES) -> list[Combination]:
    """Every strategy x precision x attention of the shipped grids' runnable cells, each cell judged as it would
    start on one GPU (or the CPU) of this machine: its task, data and mode count too (`data: hf` needs datasets,
    DocVQA accuracy needs Levenshtein)."""
    from training_core.capabilities import unsupported_reason

    from .grid.file import load_grid

    here = _local_gpu(device)
    grids: dict[tuple[str, str, str], set[str]] = {}
    reasons: dict[tuple[str, str, str], dict[str, set[str]]] = {}
    for path in sorted(matrices.glob("*.yaml")):
        for cell in load_grid(path).runnable:
            s = cell.spec
            key = (s.strategy, s.precision, s.attention)
            grids.setdefault(key, set()).add(path.stem)
            local = s.model_copy(update={"gpu": here, "nodes": 1, "gpus_per_node": 1})
            if (reason := unsupported_reason(local, device)) is not None:
                reasons.setdefault(key, {}).setdefault(reason, set()).add(path.stem)
    return [Combination(*key, tuple(sorted(grids[key])),
                        {r: tuple(sorted(g)) for r, g in sorted(reasons.get(key, {}).items())})
            for key in sorted(grids)]


def _local_gpu(device: Device) -> str:
    return short_name(device.name) if device.type == "cuda" else "cpu"


# ------------------------------------------------------------------------------------------------ all
def run_checks(device: Device | None = None) -> dict:
    """The probes (training_core/probes.py: torch is imported there, when doctor runs) and the shipped grids'
    combinations judged on this machine's device."""
    from training_core.devices import current_device
    from training_core.probes import run_probes

    device = device or current_device()
    return {"device": asdict(device), "checks": run_probes(device), "combinations": combinations(device)}


def print_report(report: dict, console) -> None:
    from rich.table import Table

    colour = {"ok": "green", "info": "white", "absent": "yellow", "fail": "red"}
    table = Table(title="this machine")
    for column in ("check", "status", "detail", "what to do"):
        table.add_column(column, overflow="fold")
    for c in report["checks"]:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.fix)
    console.print(table)
    cells = Table(title="shipped grids: which cells run here")
    for column in ("strategy", "precision", "attention", "here", "reason", "grids"):
        cells.add_column(column, overflow="fold")
    for c in report["combinations"]:
        why = "; ".join(f"{reason} [{', '.join(g)}]" if c.verdict == "some grids" else reason
                        for reason, g in c.reasons.items())
        cells.add_row(c.strategy, c.precision, c.attention, f"[{'green' if c.runs else 'yellow'}]{c.verdict}[/]",
                      why, ", ".join(c.grids))
    console.print(cells)
    runs = sum(c.runs for c in report["combinations"])
    console.print(f"{runs} of {len(report['combinations'])} strategy x precision x attention combinations of the "
                  f"shipped grids run here; the others end `unsupported` with the reason shown.")


def as_json(report: dict) -> dict:
    return {"device": report["device"], "checks": [asdict(c) for c in report["checks"]],
            "combinations": [{**asdict(c), "runs": c.runs, "verdict": c.verdict} for c in report["combinations"]]}
