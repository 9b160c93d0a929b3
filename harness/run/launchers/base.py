"""The interface every launcher implements, and the row building they share.

The runner drives a launcher the same way whatever it is:

    job = launcher.resume(cell, ..., afresh) or launcher.submit(cell, ...)   # always a Job; one that ended at once
    if job.row is not None: the row is final                                  #   (a refused submission) holds its row
    while launcher.waits and not launcher.poll(job).ended:  # local: the runner watches the cell to its end;
        ...                                                 #   on Ctrl-C: launcher.cancel(job, why)
    state = launcher.poll(job)                              # queued launchers (SLURM): a later run collects
    row = launcher.collect(job) if state.ended else None

A launcher gets its own slice of the run's options (`options.LocalOptions`, `options.SlurmOptions`), a
`RowFinisher` that makes rows (the grid's name and profile, the run's captured environment) and a console: never
the runner itself.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from training_core.result import FINAL, Outcome, build_row, row_problem

from ...readers import UnreadableError, read_text

if TYPE_CHECKING:
    from rich.console import Console

    from ...grid.cells import Cell
    from ...grid.file import Grid
    from ...grid.hardware import Machine
    from ...grid.schema import Hardware
    from ..options import RunOptions

LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class RowFinisher:
    """How a launcher turns what a cell left into a row: the grid's name, the profile and the run's environment
    (captured once per run, in a child process: training_core/env.py)."""
    grid: str
    profile: str | None
    env: dict

    def finish(self, cell: Cell, row: dict, log: Path) -> dict:
        """A row from the cell's own result (or a failure row): the grid's name, the cell's index and its log."""
        row = {**row, "matrix": self.grid, "cell": cell.index, "log": str(log), "profile": self.profile}
        if row["status"] != "ok":
            row["log_tail"] = log_tail(log)
        return row

    def failure(self, cell: Cell, status: tuple[str, str], log: Path, started: float) -> dict:
        """A row for a cell that wrote no result of its own: (status, reason)."""
        row = build_row(run_id=cell.spec.run_id, spec=cell.spec.model_dump(mode="json"),
                        outcome=Outcome(status=status[0], reason=status[1]),
                        env={**self.env, "world_size": cell.spec.world_size}, process_start=started)
        return self.finish(cell, row, log)


def finished_result(cell_dir: Path, run_id: str) -> dict | None:
    """The cell's result.json when it holds a final result of this cell (a stub such as {"status": "ok"}, another
    cell's or a foreign file is not: the cell runs again)."""
    path = cell_dir / "result.json"
    if not path.exists():
        return None
    try:
        result = json.loads(read_text(path, "result"))
    except (UnreadableError, ValueError, RecursionError):  # a directory, a link, a pipe, not UTF-8, not JSON
        return None
    if row_problem(result) is not None or result.get("run_id") != run_id:
        return None
    return result if result.get("status") in FINAL else None


@dataclass
class Job:
    """One cell's job as its launcher tracks it. `id`: the launcher's name for it (a PID, a SLURM job id). `row`:
    set when the job ended before it started (a refused submission, an earlier run's finished result)."""
    cell: Cell
    cell_dir: Path
    spec_path: Path
    id: str
    log: Path
    started: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)  # the launcher's own bookkeeping
    row: dict | None = None

    @classmethod
    def ended(cls, cell: Cell, cell_dir: Path, spec_path: Path, row: dict, log: Path) -> Job:
        return cls(cell, cell_dir, spec_path, id="", log=log, row=row)


@dataclass(frozen=True)
class State:
    """A job's state as its launcher knows it: `ended`, or not (`state` and the scheduler's `reason`), or `problem`
    when the launcher could not learn it (the run then says what failed and exits non-zero)."""
    ended: bool
    state: str = ""
    reason: str = ""
    problem: str | None = None


class Launcher(ABC):
    name: ClassVar[str]
    waits: ClassVar[bool]  # True: the runner watches each job to its end before the next; False: jobs queue
    hardware_here: ClassVar[bool]  # the grid's hardware is checked on this machine (else inside each job)
    inputs_here: ClassVar[bool]  # the cells' inputs are checked on this machine before anything starts

    def __init__(self, options: Any, rows: RowFinisher, console: Console):
        self.options, self.rows, self.console = options, rows, console

    @classmethod
    def options_of(cls, options: RunOptions) -> Any:
        """This launcher's slice of the run's options (default: none)."""
        return None

    @classmethod
    def refuse(cls, grid: Grid, options: RunOptions) -> str | None:
        """Why this launcher cannot run this grid with these options (before anything starts), or None."""
        return None

    @classmethod
    @abstractmethod
    def group_label(cls, machine: Machine, hardware: Hardware) -> str:
        """The results group of the run: the hardware its rows were measured on."""

    def skip_reason(self, cell: Cell) -> str | None:
        """Why this launcher does not run this cell now (it is listed as skipped), or None."""
        return None

    def prepare(self, cell: Cell, cell_dir: Path) -> None:
        """Before the cell is looked at: e.g. end what a killed earlier runner left behind. Default: nothing."""
        return None

    @abstractmethod
    def dry_run(self, cell: Cell, cell_dir: Path, spec_path: Path) -> None:
        """Say (or write) what would run, and run nothing."""

    @abstractmethod
    def resume(self, cell: Cell, cell_dir: Path, spec_path: Path, afresh: bool) -> Job | None:
        """What an earlier run left of this cell: its job still to collect, or an ended Job with its final row; None
        to submit. `afresh` (--force, --retry-failed): reuse no earlier result or job."""

    @abstractmethod
    def submit(self, cell: Cell, cell_dir: Path, spec_path: Path, spent_s: float = 0.0) -> Job:
        """Start the cell: its job, or an ended Job holding its failure row (e.g. the scheduler refused it).
        `spent_s`: what the cell's timeout already paid for on this host (its memory prediction)."""

    @abstractmethod
    def poll(self, job: Job) -> State:
        """The job's state now."""

    @abstractmethod
    def cancel(self, job: Job, status: tuple[str, str]) -> None:
        """End the job; its row will carry `status` (status, reason) unless it already ended on its own."""

    @abstractmethod
    def collect(self, job: Job) -> dict:
        """The row of a job that has ended."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path.exists() or not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]
