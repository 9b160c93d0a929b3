"""Run a grid: one isolated process group per cell (torchrun), a per-cell timeout that kills the whole group,
failures recorded as rows, Ctrl-C recorded as `interrupted`, resume by skipping cells with a final row, progress
as it goes and a summary at the end."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from training_core.result import Outcome, build_row
from training_core.spec import RunSpec

from . import proctree
from .launch import Nodes, sbatch_script, shell, torchrun_command
from .matrix import Cell, Grid, GridError
from .store import FINAL, RowStore

ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 30
OOM_SIGNS = ("out of memory", "memoryerror", "can't allocate memory", "cannot allocate memory",
             "memory allocation", "std::bad_alloc", "killed")


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


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


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
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=cell_env(), capture_output=True, text=True, timeout=300, check=False)
        if out.returncode == 0:
            return json.loads(out.stdout)
        problem = f"exit {out.returncode}: {(out.stderr.strip().splitlines() or [''])[-1]}"
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    return {"world_size": world_size, "hostname": socket.gethostname(), "python": platform.python_version(),
            "capture_error": f"{shell(cmd)} failed ({problem})"}


def _child_setup(memory_gb: float | None) -> Callable[[], None]:
    def setup() -> None:
        if memory_gb:
            limit = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:  # the cell dies with the runner (SIGKILL of the runner included)
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass
    return setup


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
        self.waiting: list[tuple[Cell, str, str, str]] = []  # SLURM jobs not ended yet: (cell, job, state, reason)
        self.slurm_problems: list[str] = []  # SLURM jobs whose end could not be learnt (sacct failed)

    def env(self, world_size: int) -> dict:
        """The environment of this run for a row of `world_size` ranks (rows the runner writes itself)."""
        if self._env is None:
            self._env = capture_env(self.options.nodes.nnodes)
        return {**self._env, "world_size": world_size}

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
            elif self.options.launcher == "local" and cell.spec.nodes != self.options.nodes.nnodes:
                skipped.append((cell, f"needs {cell.spec.nodes} node(s): start the runner on each node with "
                                      f"--nnodes {cell.spec.nodes} --node-rank R --master-addr HOST"))
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
        with self.store.lock(wait=self.options.wait) if self.main_node else contextlib.nullcontext():
            return self._run()

    def _run(self) -> list[dict]:
        todo, skipped = self.cells()
        for cell, why in skipped:
            self.console.print(f"[dim]skip cell {cell.index}: {why}[/dim]")
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
        self.console.print(f"    [{colour}]{status}[/{colour}] {headline(row)}")

    def _run_one(self, cell: Cell) -> dict | None:
        spec = cell.spec
        cell_dir = self.store.cell_dir(spec.run_id)
        cell_dir.mkdir(parents=True, exist_ok=True)
        self._kill_stale(cell_dir)
        spec_path = cell_dir / "spec.json"
        spec.save(spec_path)
        if self.options.launcher == "slurm":
            return self._slurm(cell, cell_dir, spec_path)
        recorded = self._finished_result(cell_dir, spec.run_id)
        if recorded is not None:  # the cell finished but the runner died before recording it
            return self._finish_row(cell, recorded, cell_dir / self._log_name())
        if self.options.dry_run:
            self.console.print("    " + shell(torchrun_command(spec, spec_path, cell_dir, self.options.nodes,
                                                                   keep_model=self.options.keep_model)))
            return None
        return self._execute(cell, cell_dir, spec_path)

    def _node_suffix(self) -> str:
        """Per-node file names when several nodes share the cell directory (a shared file system)."""
        return "" if self.options.nodes.nnodes == 1 else f".node{self.options.nodes.node_rank}"

    def _log_name(self) -> str:
        return f"log{self._node_suffix()}.txt"

    def _afresh(self, run_id: str) -> bool:
        """Run the cell again, not reusing an earlier result or job (--force, or a failed cell --retry-failed)."""
        return self.options.force or run_id in self.retried

    def _finished_result(self, cell_dir: Path, run_id: str) -> dict | None:
        path = cell_dir / "result.json"
        if self._afresh(run_id) or not path.exists():
            return None
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        return result if result.get("status") in FINAL else None

    def _kill_stale(self, cell_dir: Path) -> None:
        """A previous runner of this group was killed while this cell ran (we hold the group's lock, so it is not
        running): end the processes it recorded for the cell, those and only those (same PID and start time)."""
        record = self._procs_file(cell_dir)
        if not record.exists():
            return
        survivors = proctree.terminate(proctree.load(record), grace_s=2.0)
        if survivors:
            proctree.save(record, survivors)
            self.console.print(f"    [red]processes {sorted(survivors)} left by an earlier run survived SIGKILL[/red]")
        else:
            record.unlink(missing_ok=True)

    def _execute(self, cell: Cell, cell_dir: Path, spec_path: Path) -> dict:
        result_path = cell_dir / "result.json"
        result_path.unlink(missing_ok=True)
        log_path = cell_dir / self._log_name()
        cmd = torchrun_command(cell.spec, spec_path, cell_dir, self.options.nodes, keep_model=self.options.keep_model)
        timeout = self.options.timeout_s or cell.limits.timeout_s
        env = cell_env()
        if cell.spec.cpu_threads is not None:  # also for libraries that size their pools at import
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cell.spec.cpu_threads)
        started = time.time()
        with log_path.open("w") as log:
            log.write(f"$ {shell(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_child_setup(cell.limits.memory_gb))
            status, survivors = self._supervise(proc, cell_dir, timeout)
        if self._interrupted and status is None:
            how = "Ctrl-C" if self.interrupted_by == signal.SIGINT else signal.Signals(self.interrupted_by).name
            status = ("interrupted", f"the runner was interrupted ({how}) while this cell ran")
        if status is None and result_path.exists():
            row = self._finish_row(cell, json.loads(result_path.read_text()), log_path)
        else:
            status = status or self._classify_exit(proc.returncode, log_path, cell)
            row = self._failure_row(cell, status, log_path, started)
        if survivors:
            row["survivors"] = sorted(survivors)
            self.console.print(f"    [red]processes {sorted(survivors)} of this cell survived SIGKILL; recorded in "
                               f"{self._procs_file(cell_dir)}, the next run ends them[/red]")
        return row

    def _procs_file(self, cell_dir: Path) -> Path:
        return cell_dir / f"procs{self._node_suffix()}.json"

    def _supervise(self, proc: subprocess.Popen, cell_dir: Path, timeout: float) -> tuple[tuple | None, dict]:
        """Wait for the cell, recording its process tree as it grows; on its timeout or an interrupt end the whole
        tree (every descendant, whatever its session), and after a normal exit end what it left behind. Returns
        (status or None, the processes that survived SIGKILL)."""
        record = self._procs_file(cell_dir)
        tracked: proctree.Procs = {}
        deadline = time.monotonic() + timeout
        status = None
        try:
            while proc.poll() is None:
                now = proctree.snapshot(proc.pid)
                if now.keys() - tracked.keys():
                    tracked.update(now)
                    proctree.save(record, tracked)
                if self._interrupted:
                    break
                if time.monotonic() > deadline:
                    status = ("timeout", f"killed after the cell's timeout of {timeout:g} s")
                    break
                time.sleep(0.2)
        finally:
            tracked.update(proctree.snapshot(proc.pid))
            survivors = proctree.terminate(tracked, grace_s=5.0 if self._interrupted else 10.0, reap=proc.poll)
            proc.wait()
            if survivors:
                proctree.save(record, survivors)
            else:
                record.unlink(missing_ok=True)
        return status, survivors

    def _classify_exit(self, code: int, log_path: Path, cell: Cell) -> tuple[str, str]:
        tail = "\n".join(log_tail(log_path, 60)).lower()
        signal_note = f" (signal {-code})" if code < 0 else ""
        if code in (-9, 137) or any(sign in tail for sign in OOM_SIGNS):
            limit = f" under the cell's {cell.limits.memory_gb:g} GB limit" if cell.limits.memory_gb else ""
            return "oom", f"out of memory{limit}: exited with code {code}{signal_note} without a result"
        return "error", f"exited with code {code}{signal_note} without writing a result (see the log tail)"

    def _failure_row(self, cell: Cell, status: tuple[str, str], log_path: Path, started: float) -> dict:
        outcome = Outcome(status=status[0], reason=status[1])
        row = build_row(run_id=cell.spec.run_id, spec=cell.spec.model_dump(mode="json"), outcome=outcome,
                        env=self.env(cell.spec.world_size), process_start=started)
        return self._finish_row(cell, row, log_path)

    def _finish_row(self, cell: Cell, row: dict, log_path: Path) -> dict:
        row = {**row, "matrix": self.grid.name, "cell": cell.index, "log": str(log_path)}
        row["profile"] = self.grid.profile
        if row["status"] != "ok":
            row["log_tail"] = log_tail(log_path)
        return row

    # ---------------------------------------------------------------- slurm
    def _slurm(self, cell: Cell, cell_dir: Path, spec_path: Path) -> dict | None:
        """Submit the cell's job, or collect it once SLURM says it ended: the row is the job's result.json checked
        against SLURM's own account of the job (a job SLURM ended FAILED, CANCELLED, NODE_FAIL or TIMEOUT is never
        an `ok` row), with the job id, state, exit code and whether it had its nodes to itself."""
        job_file = cell_dir / "slurm_job_id"
        path = cell_dir / "job.sbatch"
        if self.options.dry_run:
            path.write_text(self._sbatch_script(cell, cell_dir, spec_path))
            self.console.print(f"    wrote {path} ({cell.spec.nodes} node(s); dry run: not submitted)")
            return None
        if job_file.exists() and not self._afresh(cell.spec.run_id):
            return self._collect(cell, cell_dir, job_file.read_text().strip())
        path.write_text(self._sbatch_script(cell, cell_dir, spec_path))
        # a resubmitted cell (--force, --retry-failed): the earlier job's result must not be collected as this one's
        (cell_dir / "result.json").unlink(missing_ok=True)
        job_file.unlink(missing_ok=True)
        try:
            out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False,
                                 timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            out = subprocess.CompletedProcess(["sbatch"], 1, "", f"{type(exc).__name__}: {exc}")
        if out.returncode:  # this cell's error row; the other cells are still submitted
            message = (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}").replace("\n", "; ")
            return self._failure_row(cell, ("error", f"sbatch refused {path}: {message}"), path, time.time())
        job = out.stdout.strip().split(";")[0]
        job_file.write_text(job + "\n")
        self.console.print(f"    submitted {path} as job {job}")
        return None

    def _sbatch_script(self, cell: Cell, cell_dir: Path, spec_path: Path) -> str:
        return sbatch_script(cell.spec, spec_path.resolve(), cell_dir.resolve(),
                             job_name=f"phi3v-{self.grid.name}-{cell.spec.run_id}",
                             timeout_s=self.options.timeout_s or cell.limits.timeout_s, workdir=ROOT,
                             extra=self.options.sbatch_args, check_hardware=self.options.check_hardware,
                             keep_model=self.options.keep_model, port=self.options.master_port,
                             exclusive=not self.options.slurm_shared, memory_gb=cell.limits.memory_gb)

    def _collect(self, cell: Cell, cell_dir: Path, job: str) -> dict | None:
        account = slurm_account(job)
        log = _slurm_log(cell_dir)
        if account.error:
            self.slurm_problems.append(f"cell {cell.index} (job {job}): {account.error}")
            return None
        if account.state in SLURM_WAITING:
            self.waiting.append((cell, job, account.state, slurm_reason(job)))
            return None
        recorded = self._finished_result(cell_dir, cell.spec.run_id)
        status, what = SLURM_ENDED_BADLY.get(account.state, ("error", f"ended {account.state}"))
        ended = f"SLURM job {job} {what} ({account.state}, exit {account.exit_code or '?'})"
        if recorded is not None and (recorded.get("status") != "ok" or account.state not in SLURM_ENDED_BADLY):
            row = self._finish_row(cell, recorded, log)  # the cell's own account (a failure keeps its reason)
        else:  # no result, or an `ok` one from a job SLURM says ended badly: SLURM's account wins
            told = "although its result.json says ok" if recorded is not None \
                else "without writing a result (see the job's log)"
            row = self._failure_row(cell, (status, f"{ended} {told}"), log,
                                    (cell_dir / "slurm_job_id").stat().st_mtime)
        script = cell_dir / "job.sbatch"
        row["slurm"] = {"job": job, "state": account.state, "exit_code": account.exit_code,
                        "exclusive": "#SBATCH --exclusive" in script.read_text().splitlines() if script.exists()
                        else None}
        return row


def _slurm_log(cell_dir: Path) -> Path:
    """The job's log (`--output=slurm-%j.log`): of the submitted job when its id is known, else the newest."""
    job_file = cell_dir / "slurm_job_id"
    if job_file.exists():
        return cell_dir / f"slurm-{job_file.read_text().strip()}.log"
    logs = sorted(cell_dir.glob("slurm-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else cell_dir / "job.sbatch"


SLURM_WAITING = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}
# SLURM's end states that make a row a failure whatever the job's result.json says: (status, why)
SLURM_ENDED_BADLY = {
    "FAILED": ("error", "failed"),
    "NODE_FAIL": ("error", "lost a node"),
    "BOOT_FAIL": ("error", "could not boot a node"),
    "DEADLINE": ("timeout", "reached its deadline"),
    "TIMEOUT": ("timeout", "reached its time limit"),
    "OUT_OF_MEMORY": ("oom", "ran out of host memory"),
    "CANCELLED": ("interrupted", "was cancelled (scancel or the scheduler; a rerun runs it again)"),
    "PREEMPTED": ("interrupted", "was preempted"),
}


@dataclass(frozen=True)
class SlurmAccount:
    state: str | None = None
    exit_code: str | None = None
    error: str | None = None  # sacct could not say: what failed


def slurm_account(job: str) -> SlurmAccount:
    """The job's state and exit code from `sacct` (accounting: slurmdbd). When sacct cannot answer, `error` says
    what failed and how to enable accounting; a job sacct does not list yet (records appear a few seconds after
    submission and after the end) is PENDING."""
    try:
        out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "State,ExitCode"], capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SlurmAccount(error=f"sacct could not be run ({type(exc).__name__}: {exc})")
    if out.returncode:
        detail = out.stderr.strip().replace("\n", "; ") or f"exit {out.returncode}"
        return SlurmAccount(error=f"sacct failed ({detail}); the runner needs SLURM accounting to see how a job "
                                  "ended: AccountingStorageType=accounting_storage/slurmdbd with a running slurmdbd")
    fields = (out.stdout.strip().splitlines() or ["PENDING"])[0].split("|")
    state = fields[0].split()[0] if fields[0] else "PENDING"  # 'CANCELLED by 0' -> CANCELLED
    return SlurmAccount(state=state, exit_code=fields[1] if len(fields) > 1 else None)


def slurm_reason(job: str) -> str:
    """Why a job is not running yet, from `squeue` (e.g. Resources, Priority, PartitionNodeLimit); '' if unknown."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, timeout=60,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def headline(row: dict) -> str:
    m = row.get("metrics") or {}
    if row["status"] != "ok":
        return row.get("reason") or ""
    parts = []
    if "images_per_s" in m:
        parts.append(f"{m['images_per_s']:.2f} images/s")
    for key in ("anls", "accuracy"):
        if key in m:
            before = m.get(f"{key}_before")
            parts.append(f"{key} {before:.3f} -> {m[key]:.3f}" if before is not None else f"{key} {m[key]:.3f}")
    if "peak_mem_allocated_bytes" in m:
        parts.append(f"peak {m['peak_mem_allocated_bytes'] / 2**30:.1f} GiB")
    elif "peak_rss_bytes" in m:
        parts.append(f"peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB")
    return ", ".join(parts)


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


