"""Run a grid: the cells in order through a launcher (harness/launchers: local torchrun, SLURM), failures recorded as
rows, Ctrl-C recorded as `interrupted`, resume by skipping cells with a final row, progress as it goes. What a
launcher does (start, watch, end, make a row) lives in its own module; the runner only drives the interface."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from training_core.result import LINE_REASON_LIMIT, clip_reason
from training_core.spec import RunSpec

from . import launchers
from .launch import Nodes, shell
from .launchers.base import Context, Job, Launcher
from .matrix import Cell, Grid, GridError
from .measures import size_text
from .store import RowStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunOptions:
    results: Path = Path("results/runs")
    group: str | None = None
    force: bool = False
    filters: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    nodes: Nodes = field(default_factory=Nodes)
    launcher: str = "local"
    dry_run: bool = False
    sbatch_args: list[str] = field(default_factory=list)
    check_hardware: bool = True  # SLURM: check each compute node's GPUs inside the job
    retry_failed: bool = False  # rerun cells whose final row is a failure (RETRYABLE), not the others
    wait: bool = False  # another runner holds the group: wait for it instead of refusing
    keep_model: bool = False  # each cell keeps its trained model / adapter in cells/<run_id>/model
    master_port: int | None = None  # SLURM: the rendezvous port of every job (default: from each job's id)
    slurm_shared: bool = False  # SLURM: let jobs share their nodes with other jobs (default: exclusive)
    estimate: bool | None = None  # predict each cell's peak memory before it starts (None: GPU cells only)
    skip_predicted_oom: bool | None = None  # a cell predicted not to fit is recorded, not run (None: SLURM only)


RETRYABLE = {"error", "timeout", "oom", "diverged"}  # final, but worth another try (--retry-failed)


def matches(cell: Cell, filters: dict[str, str]) -> bool:
    return all(str(cell.fields.get(k, getattr(cell.spec, k, None))) == v for k, v in filters.items())


def check_selection(grid: Grid, filters: dict[str, str], to_run: bool = True) -> None:
    """A grid with no runnable cell (`to_run`: `plan` still lists such a grid with every reason), or filters that
    name an unknown key or match no runnable cell, run nothing: an error that says why, never a silent success."""
    valid = set(RunSpec.model_fields)
    for key, value in filters.items():
        if key not in valid:
            raise GridError(f"--filter {key}={value}: {key!r} is not a cell setting; valid keys: "
                            f"{', '.join(sorted(valid))}")
    runnable = grid.runnable
    if not runnable and to_run:
        reasons = sorted({f"{c.status}: {c.reason}" for c in grid.cells})
        raise GridError(f"{grid.path}: none of the grid's {len(grid.cells)} cell(s) can run ("
                        + "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "") + ")")
    if filters and runnable and not any(matches(c, filters) for c in runnable):
        seen = {k: sorted({str(getattr(c.spec, k)) for c in runnable}) for k in filters}
        raise GridError(f"{grid.path}: --filter {' '.join(f'{k}={v}' for k, v in filters.items())} matches none of "
                        f"the {len(runnable)} runnable cell(s); the grid has "
                        + "; ".join(f"{k}: {', '.join(v)}" for k, v in seen.items()))


def cell_env() -> dict[str, str]:
    """The environment a cell process starts with: this checkout first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def capture_env(world_size: int) -> dict:
    """The environment rows record (`training_core.env.capture`), taken in a child process like a cell's, so the
    runner never imports torch. If that process fails, the row still gets what is known without torch, and why the
    rest is missing."""
    cmd = [sys.executable, "-m", "training_core.env", "--world-size", str(world_size)]
    found, problem = child_json(cmd, timeout=300)
    if found is not None:
        return found
    return {"world_size": world_size, "hostname": socket.gethostname(), "python": platform.python_version(),
            "capture_error": f"{shell(cmd)} failed ({problem})"}


def child_json(cmd: list[str], timeout: float) -> tuple[dict | None, str]:
    """The JSON object a `python -m ...` child prints last on stdout (run like a cell: this checkout first), or None
    and what went wrong."""
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=cell_env(), capture_output=True, text=True, timeout=timeout,
                             check=False)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1]), ""
        return None, f"exit {out.returncode}: {(out.stderr.strip().splitlines() or [''])[-1]}"
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


class Runner:
    def __init__(self, grid: Grid, options: RunOptions, machine_label: str, console: Console | None = None):
        self.grid, self.options = grid, options
        self.console = console or Console(highlight=False)
        group = options.group or machine_label + (f"-{grid.profile}" if grid.profile else "")
        self.store = RowStore(options.results / grid.name / group)
        self.main_node = options.nodes.node_rank == 0
        self._interrupted = False
        self.interrupted_by = signal.SIGINT
        self.kept_failures: list[tuple[Cell, str]] = []  # failed in an earlier run, not rerun now
        self.retried: set[str] = set()  # run_ids of failed cells rerun now (--retry-failed): their old results go
        self._env: dict | None = None  # captured once per run (a child process), see env()
        self.waiting: list[tuple[Cell, str, str, str]] = []  # jobs not ended yet: (cell, job, state, reason)
        self.problems: list[str] = []  # jobs whose state could not be learnt (e.g. sacct failed)
        self.ctx = Context(grid=grid, options=options, console=self.console, env=self.env, afresh=self._afresh)
        self.launcher: Launcher = launchers.get(options.launcher)(self.ctx)

    def env(self, world_size: int) -> dict:
        """The environment of this run for a row of `world_size` ranks (rows the runner writes itself)."""
        if self._env is None:
            self._env = capture_env(self.options.nodes.nnodes)
        return {**self._env, "world_size": world_size}

    def _afresh(self, run_id: str) -> bool:
        """Run the cell again, not reusing an earlier result or job (--force, or a failed cell --retry-failed)."""
        return self.options.force or run_id in self.retried

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
                    self.kept_failures.append((cell, status))
            else:
                todo.append(cell)
        return todo, skipped

    # ---------------------------------------------------------------- running
    def run(self) -> list[dict]:
        """Run the cells under the group's lock (the main node holds it; other nodes of a multi-node run write only
        their own per-node files)."""
        if not self.main_node:
            self.store.check_no_links()
        with self.store.lock(wait=self.options.wait) if self.main_node else contextlib.nullcontext():
            return self._run()

    def _run(self) -> list[dict]:
        todo, skipped = self.cells()
        for cell, why in skipped:
            self.console.print(f"[dim]skip cell {cell.index}: {escape(why)}[/dim]")
        if self.main_node and not self.options.dry_run:
            self.store.write_env(self.env(self.options.nodes.nnodes))
        previous = {sig: signal.signal(sig, self._on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        rows, started = [], time.monotonic()
        try:
            for n, cell in enumerate(todo, start=1):
                if self._interrupted:
                    break
                self._announce(n, len(todo), cell, started)
                row = self._run_one(cell)
                if row is None:
                    continue
                row = attach_prediction(row, self.store.cell_dir(cell.spec.run_id))
                rows.append(row)
                if self.main_node:
                    self.store.append(row)
                self._report(row)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return rows

    def _on_interrupt(self, signum, frame) -> None:
        """Ctrl-C or SIGTERM (a scheduler or `kill`): the running cell's tree is ended, it is recorded
        `interrupted`, and the run stops."""
        self._interrupted = True
        self.interrupted_by = signum

    def _announce(self, n: int, total: int, cell: Cell, started: float) -> None:
        elapsed = time.monotonic() - started
        eta = f", ~{_clock(elapsed / (n - 1) * (total - n + 1))} left" if n > 1 else ""
        s = cell.spec
        self.console.print(f"[bold][{n}/{total}][/bold] cell {cell.index} {s.run_id}: {s.strategy} {s.precision} "
                           f"{s.attention} {s.nodes}x{s.gpus_per_node} (elapsed {_clock(elapsed)}{eta})")

    def _report(self, row: dict) -> None:
        status = row["status"]
        colour = {"ok": "green", "unsupported": "yellow"}.get(status, "red")
        self.console.print(f"    [{colour}]{status}[/{colour}] {escape(headline(row))}")

    def _run_one(self, cell: Cell) -> dict | None:
        """The cell through the launcher: an earlier run's job or row, else a new job; watched to its end when the
        launcher waits (ended on Ctrl-C), else collected now if it has ended and listed as waiting if not."""
        launcher = self.launcher
        cell_dir = self.store.cell_dir(cell.spec.run_id)
        cell_dir.mkdir(parents=True, exist_ok=True)
        launcher.prepare(cell, cell_dir)
        spec_path = cell_dir / "spec.json"
        cell.spec.save(spec_path)
        job = None if self.options.dry_run else launcher.resume(cell, cell_dir, spec_path)
        if isinstance(job, dict):
            return job
        if self.options.dry_run:
            launcher.dry_run(cell, cell_dir, spec_path)
            return None
        if job is None:
            refused = self._predict(cell, cell_dir, spec_path)
            if refused is not None:
                return refused
            job = launcher.submit(cell, cell_dir, spec_path)
            if isinstance(job, dict):
                return job
        state = self._watch(job) if launcher.waits else launcher.poll(job)
        if state.problem:
            self.problems.append(state.problem)
            return None
        if not state.ended:
            self.waiting.append((cell, job.id, state.state, state.reason))
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
        predicted = estimate(spec_path, cell_dir)
        path.write_text(json.dumps(predicted, sort_keys=True) + "\n")
        if "error" in predicted:
            self.console.print(f"    predicted peak: not estimated ({escape(str(predicted['error']))})")
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
            row = self.ctx.failure_row(cell, ("unsupported", reason), path, time.time())
            return {**row, "predicted": predicted}
        return None

    def _watch(self, job: Job):
        """Until the job ends; an interrupt (Ctrl-C, SIGTERM) cancels it, recorded `interrupted`."""
        try:
            while not (state := self.launcher.poll(job)).ended:
                if self._interrupted:
                    how = "Ctrl-C" if self.interrupted_by == signal.SIGINT else signal.Signals(self.interrupted_by).name
                    self.launcher.cancel(job, ("interrupted", f"the runner was interrupted ({how}) while this cell "
                                                              "ran"))
                    continue
                time.sleep(0.2)
        except BaseException:
            self.launcher.cancel(job, ("error", "the runner failed while this cell ran"))
            raise
        return state


PREDICTED_FILE = "predicted.json"  # the cell's memory prediction, made before it started, for its row


def estimate(spec_path: Path, cell_dir: Path) -> dict:
    """`python -m training_core.estimate` for one cell, in a child process (the runner never imports torch)."""
    cmd = [sys.executable, "-m", "training_core.estimate", "--spec", str(spec_path), "--cell-dir", str(cell_dir)]
    found, problem = child_json(cmd, timeout=900)
    return found if found is not None else {"error": f"{shell(cmd)} failed ({problem})"}


def attach_prediction(row: dict, cell_dir: Path) -> dict:
    """The row with the prediction its cell got before it started (predicted.json), if any."""
    path = cell_dir / PREDICTED_FILE
    if "predicted" in row or not path.is_file():
        return row
    try:
        return {**row, "predicted": json.loads(path.read_text())}
    except (OSError, json.JSONDecodeError):
        return row


def headline(row: dict) -> str:
    m = row.get("metrics") or {}
    if row["status"] != "ok":
        return clip_reason(row.get("reason"), LINE_REASON_LIMIT) or ""
    parts = []
    if "images_per_s" in m:
        parts.append(f"{m['images_per_s']:.2f} images/s")
    for key in ("anls", "accuracy"):
        if key in m:
            before = m.get(f"{key}_before")
            parts.append(f"{key} {before:.3f} -> {m[key]:.3f}" if before is not None else f"{key} {m[key]:.3f}")
    predicted = (row.get("predicted") or {}).get("peak_bytes")
    if "peak_mem_allocated_bytes" in m:
        parts.append(f"peak {m['peak_mem_allocated_bytes'] / 2**30:.1f} GiB"
                     + (f" (predicted {predicted / 2**30:.1f})" if predicted else ""))
    elif "peak_rss_bytes" in m:
        parts.append(f"peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB")
    flag = (row.get("gradients") or {}).get("flag")
    if flag:  # trainable parameters that got no gradient in the first optimizer step
        parts.append(f"warning: {flag}")
    return ", ".join(parts)


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


