"""Run a grid: the cells in order through a launcher (harness/run/launchers: local torchrun, SLURM), failures
recorded as rows, Ctrl-C recorded as `interrupted`, resume by skipping cells with a final row, progress as it goes.
What a launcher does (start, watch, end, make a row) lives in its own module; the runner only drives the interface
and hands each launcher its options' slice, a row finisher and the run's captured environment."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from training_core.result import RETRYABLE

from ..grid.cells import Cell
from ..grid.file import Grid
from ..grid.hardware import Machine
from ..grid.select import matches
from ..outputs import plain
from ..rows import size_text
from ..store import RowStore, check_component
from . import launchers
from .child import PREDICTED_FILE, attach_prediction, capture_env, predict
from .console import clock, headline
from .launchers.base import Job, Launcher, RowFinisher
from .options import RunOptions


@dataclass
class RunOutcome:
    """What a run did, for the CLI to print and to choose the exit code from."""
    store: RowStore
    main_node: bool
    rows: list[dict] = field(default_factory=list)  # rows recorded now
    waiting: list[tuple[Cell, str, str, str]] = field(default_factory=list)  # jobs not ended: (cell, job, state, why)
    problems: list[str] = field(default_factory=list)  # jobs whose state could not be learnt (e.g. sacct failed)
    kept_failures: list[tuple[Cell, str]] = field(default_factory=list)  # failed earlier, not rerun now
    interrupted_by: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM)

    @property
    def failed(self) -> bool:
        return (any(r["status"] not in ("ok", "unsupported") for r in self.rows) or bool(self.kept_failures)
                or bool(self.problems))


class Runner:
    def __init__(self, grid: Grid, options: RunOptions, machine: Machine, console: Console | None = None):
        self.grid, self.options = grid, options
        self.console = console or Console(highlight=False)
        self.launcher_class: type[Launcher] = launchers.get(options.launcher)
        # rows are grouped by the hardware that ran them (this machine's; under SLURM the grid's, e.g. 8xA100)
        label = self.launcher_class.group_label(machine, grid.file.hardware)
        group = options.group or label + (f"-{grid.profile}" if grid.profile else "")
        check_component(group, "the results group (--group, or the grid's hardware and profile)")
        self.outcome = RunOutcome(RowStore(options.results / grid.name / group), options.nodes.node_rank == 0)
        self.store = self.outcome.store
        self.launcher: Launcher | None = None  # built once the run's environment is captured
        self.retried: set[str] = set()  # run_ids of failed cells rerun now (--retry-failed)
        self.tracking = None  # --track: harness/track/live.py, made when the run starts

    # ---------------------------------------------------------------- selection
    def cells(self) -> tuple[list[Cell], list[tuple[Cell, str]]]:
        """(cells to run, [(cell, why skipped)])."""
        todo, skipped = [], []
        done = {} if self.options.force else self.store.final_rows()
        for cell in self.grid.cells:
            if not cell.runnable:
                skipped.append((cell, f"{cell.status}: {cell.reason}"))
            elif not matches(cell, self.options.filters):
                continue
            elif (why := self.launcher.skip_reason(cell)) is not None:
                skipped.append((cell, why))
            elif cell.spec.run_id in done and self.options.retry_failed \
                    and done[cell.spec.run_id]["status"] in RETRYABLE:
                todo.append(cell)
                self.retried.add(cell.spec.run_id)
            elif cell.spec.run_id in done:
                status = done[cell.spec.run_id]["status"]
                skipped.append((cell, f"done ({status}); --force reruns it"))
                if status in RETRYABLE:
                    self.outcome.kept_failures.append((cell, status))
            else:
                todo.append(cell)
        return todo, skipped

    # ---------------------------------------------------------------- running
    def run(self) -> RunOutcome:
        """Run the cells under the group's lock (the main node holds it; other nodes of a multi-node run write only
        their own per-node files)."""
        if not self.outcome.main_node:
            self.store.check_no_links()
        with self.store.lock(wait=self.options.wait) if self.outcome.main_node else contextlib.nullcontext():
            self._run()
        return self.outcome

    def _start_launcher(self) -> None:
        """The run's environment, captured once (a child process; not in a dry run), and the launcher built with it."""
        env = {} if self.options.dry_run else capture_env(self.options.nodes.nnodes)
        rows = RowFinisher(self.grid.name, self.grid.profile, env)
        self.launcher = self.launcher_class(self.launcher_class.options_of(self.options), rows, self.console)
        if self.outcome.main_node and not self.options.dry_run:
            self.store.write_env(env)
        if self.options.track and self.outcome.main_node and not self.options.dry_run:
            from ..track.live import LiveTracking  # the trackers' packages load only when asked for

            self.tracking = LiveTracking(self.options.track, self.options.results, self.grid.name,
                                         self.store.directory.name,
                                         warn=lambda text: self.console.print(f"[yellow]{escape(plain(text))}[/yellow]"))

    def _run(self) -> None:
        self._start_launcher()
        todo, skipped = self.cells()
        for cell, why in skipped:
            self.console.print(f"[dim]skip cell {cell.index}: {escape(plain(why))}[/dim]")
        previous = {sig: signal.signal(sig, self._on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            for n, cell in enumerate(todo, start=1):
                if self.outcome.interrupted_by is not None:
                    break
                self._announce(n, len(todo), cell, started)
                row = self._run_one(cell)
                if row is None:
                    continue
                row = attach_prediction(row, self.store.cell_dir(cell.spec.run_id))
                if self.tracking is not None:
                    row = self.tracking.end(row, self.store.cell_dir(cell.spec.run_id))
                self.outcome.rows.append(row)
                if self.outcome.main_node:
                    self.store.append(row)
                self._report(row)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.tracking is not None:
                self.tracking.close()

    def _on_interrupt(self, signum, frame) -> None:
        """Ctrl-C or SIGTERM (a scheduler or `kill`): the running cell's tree is ended, it is recorded
        `interrupted`, and the run stops."""
        self.outcome.interrupted_by = signum

    def _announce(self, n: int, total: int, cell: Cell, started: float) -> None:
        elapsed = time.monotonic() - started
        eta = f", ~{clock(elapsed / (n - 1) * (total - n + 1))} left" if n > 1 else ""
        s = cell.spec
        self.console.print(f"[bold][{n}/{total}][/bold] cell {cell.index} {s.run_id}: {s.strategy} {s.precision} "
                           f"{s.attention} {s.nodes}x{s.gpus_per_node} (elapsed {clock(elapsed)}{eta})")

    def _report(self, row: dict) -> None:
        status = row["status"]
        colour = {"ok": "green", "unsupported": "yellow"}.get(status, "red")
        self.console.print(f"    [{colour}]{status}[/{colour}] {escape(plain(headline(row)))}")

    def _run_one(self, cell: Cell) -> dict | None:
        """The cell through the launcher: an earlier run's job or row, else a new job; watched to its end when the
        launcher waits (ended on Ctrl-C), else collected now if it has ended and listed as waiting if not."""
        launcher = self.launcher
        cell_dir = self.store.cell_dir(cell.spec.run_id)
        cell_dir.mkdir(parents=True, exist_ok=True)
        launcher.prepare(cell, cell_dir)
        spec_path = cell_dir / "spec.json"
        cell.spec.save(spec_path)
        if self.options.dry_run:
            launcher.dry_run(cell, cell_dir, spec_path)
            return None
        afresh = self.options.force or cell.spec.run_id in self.retried
        job = launcher.resume(cell, cell_dir, spec_path, afresh)
        if job is None:
            predicting = time.monotonic()
            refused = self._predict(cell, cell_dir, spec_path)
            if refused is not None:
                return refused
            job = launcher.submit(cell, cell_dir, spec_path, spent_s=time.monotonic() - predicting)
        if job.row is not None:
            return job.row
        if self.tracking is not None:
            self.tracking.begin(cell.index, cell.spec.run_id, json.loads(spec_path.read_text()), cell_dir)
        state = self._watch(job) if launcher.waits else launcher.poll(job)
        if state.problem:
            self.outcome.problems.append(state.problem)
            return None
        if not state.ended:
            self.outcome.waiting.append((cell, job.id, state.state, state.reason))
            return None
        return launcher.collect(job)

    # ---------------------------------------------------------------- memory prediction
    def _predict(self, cell: Cell, cell_dir: Path, spec_path: Path) -> dict | None:
        """The cell's predicted peak memory (training_core/estimate, in a child process), printed and kept in the cell
        directory for its row. A cell predicted not to fit its GPU is recorded, not run, when asked
        (--skip-predicted-oom; under SLURM by default): as `unsupported` with the prediction as its reason, never as
        a measured OOM. Returns that row, or None to go on."""
        path = cell_dir / PREDICTED_FILE
        path.unlink(missing_ok=True)
        wanted = self.options.estimate if self.options.estimate is not None else cell.spec.gpu.lower() != "cpu"
        if not wanted:
            return None
        timeout = self.options.timeout_s or cell.limits.timeout_s
        predicted = predict(spec_path, cell_dir, timeout)
        path.write_text(json.dumps(predicted, sort_keys=True) + "\n")
        if predicted.get("timed_out"):  # the cell's whole timeout went on its prediction: nothing left to run it
            reason = (f"its memory prediction alone ran past the cell's timeout of {timeout:g} s; not run (raise "
                      "limits.timeout_s, or run it with --no-estimate)")
            return self.launcher.rows.failure(cell, ("timeout", reason), path, time.time())
        if "error" in predicted:
            self.console.print(f"    predicted peak: not estimated ({escape(plain(predicted['error']))})")
            return None
        verdict = predicted.get("fit") or {}
        self.console.print(f"    predicted peak {size_text(predicted['peak_bytes'])} per rank at the {predicted['phase']}"
                           + (f"; {verdict['gpu']}: {verdict['reason']}" if verdict else ""))
        skip = self.options.skip_predicted_oom
        if skip is None:
            skip = not self.launcher.waits  # queued launchers: a job predicted not to fit is not submitted
        if verdict.get("fits") is False and skip:
            reason = (f"predicted not to fit: {size_text(predicted['peak_bytes'])} per rank at the {predicted['phase']}, "
                      f"{verdict['gpu']}: {verdict['reason']} ({verdict['rule']}); a prediction, not a measured OOM: "
                      "not run (run it with --run-predicted-oom)")
            row = self.launcher.rows.failure(cell, ("unsupported", reason), path, time.time())
            return {**row, "predicted": predicted}
        return None

    def _watch(self, job: Job):
        """Until the job ends; an interrupt (Ctrl-C, SIGTERM) cancels it, recorded `interrupted`."""
        try:
            while not (state := self.launcher.poll(job)).ended:
                if self.outcome.interrupted_by is not None:
                    how = "Ctrl-C" if self.outcome.interrupted_by == signal.SIGINT \
                        else signal.Signals(self.outcome.interrupted_by).name
                    self.launcher.cancel(job, ("interrupted", f"the runner was interrupted ({how}) while this cell "
                                                              "ran"))
                    continue
                time.sleep(0.2)
        except BaseException:
            self.launcher.cancel(job, ("error", "the runner failed while this cell ran"))
            raise
        return state
