"""The local launcher: torchrun on this machine, in a process group of its own, watched until it ends.

Standalone for one node; for a multi-node cell every node starts the runner with --nnodes/--node-rank/--master-addr
(a static rendezvous, the guide's own form) and writes its own per-node files into the shared cell directory. The
runner records the cell's process tree as it grows (`procs.json`); a timeout, Ctrl-C or a normal exit ends the whole
tree, and a runner that was killed leaves the record for the next run to end exactly those processes.
"""

from __future__ import annotations

import ctypes
import json
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape

from training_core import rank_failures

from ...grid import hardware
from ...grid.cells import Cell
from ...paths import ROOT
from .. import proctree
from ..child import cell_env
from ..command import shell, torchrun_command
from ..options import LocalOptions, RunOptions
from .base import Job, Launcher, State, finished_result, log_tail

OOM_SIGNS = ("out of memory", "memoryerror", "can't allocate memory", "cannot allocate memory",
             "memory allocation", "std::bad_alloc", "killed")


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


class LocalLauncher(Launcher):
    name = "local"
    waits = True
    hardware_here = True
    inputs_here = True

    options: LocalOptions

    @classmethod
    def options_of(cls, options: RunOptions) -> LocalOptions:
        return options.local

    @classmethod
    def group_label(cls, machine, hw) -> str:
        return hardware.group_label(machine, hw.gpu, hw.gpus_per_node)

    # ------------------------------------------------------------------------------------------- files of a node
    @property
    def _nodes(self):
        return self.options.nodes

    def _suffix(self) -> str:
        """Per-node file names when several nodes share the cell directory (a shared file system)."""
        return "" if self._nodes.nnodes == 1 else f".node{self._nodes.node_rank}"

    def _log(self, cell_dir: Path) -> Path:
        return cell_dir / f"log{self._suffix()}.txt"

    def _procs(self, cell_dir: Path) -> Path:
        return cell_dir / f"procs{self._suffix()}.json"

    def _command(self, cell: Cell, cell_dir: Path, spec_path: Path) -> list[str]:
        return torchrun_command(cell.spec, spec_path, cell_dir, self._nodes, keep_model=self.options.keep_model)

    # ------------------------------------------------------------------------------------------------ interface
    def skip_reason(self, cell: Cell) -> str | None:
        if cell.spec.nodes != self._nodes.nnodes:
            return (f"needs {cell.spec.nodes} node(s): start the runner on each node with --nnodes {cell.spec.nodes} "
                    "--node-rank R --master-addr HOST")
        return None

    def prepare(self, cell: Cell, cell_dir: Path) -> None:
        """A previous runner of this group was killed while this cell ran (we hold the group's lock, so it is not
        running): end the processes it recorded for the cell, those and only those (same PID and start time, and the
        marker it put in their environment: a planted record gets nothing killed). A dry run ends nothing."""
        record = self._procs(cell_dir)
        if not record.exists() or record.is_symlink():
            return
        marker, recorded = proctree.load(record)
        left = proctree.marked(proctree.alive(recorded), marker)
        if self.options.dry_run:
            if left:
                self.console.print(f"    processes {sorted(left)} left by an earlier run of this cell would be "
                                       "ended (not in a dry run)")
            return
        if left:
            self.console.print(escape(f"    ending what an earlier, killed run of this cell left: {proctree.describe(left)}"))
        survivors = proctree.terminate(left, grace_s=2.0)
        if survivors:
            proctree.save(record, survivors, marker)
            self.console.print(f"    [red]processes {sorted(survivors)} left by an earlier run survived "
                                   "SIGKILL[/red]")
        else:
            record.unlink(missing_ok=True)

    def dry_run(self, cell: Cell, cell_dir: Path, spec_path: Path) -> None:
        self.console.print("    " + escape(shell(self._command(cell, cell_dir, spec_path))))

    def resume(self, cell: Cell, cell_dir: Path, spec_path: Path, afresh: bool) -> Job | None:
        recorded = None if afresh else finished_result(cell_dir, cell.spec.run_id)
        if recorded is not None:  # the cell finished but the runner died before recording it
            log = self._log(cell_dir)
            return Job.ended(cell, cell_dir, spec_path, self.rows.finish(cell, recorded, log), log)
        return None

    def submit(self, cell: Cell, cell_dir: Path, spec_path: Path, spent_s: float = 0.0) -> Job:
        (cell_dir / "result.json").unlink(missing_ok=True)
        for stale in cell_dir.glob(rank_failures.PATTERN):  # an earlier run's: not this one's cause
            stale.unlink(missing_ok=True)
        log_path = self._log(cell_dir)
        cmd = self._command(cell, cell_dir, spec_path)
        env = cell_env()
        marker = env[proctree.MARKER] = proctree.new_marker()
        if cell.spec.cpu_threads is not None:  # also for libraries that size their pools at import
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cell.spec.cpu_threads)
        timeout = self.options.timeout_s or cell.limits.timeout_s
        left = max(1.0, timeout - spent_s)  # the memory prediction before it counted against the same timeout
        started = time.time()
        with log_path.open("w") as log:
            log.write(f"$ {shell(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_child_setup(cell.limits.memory_gb))
        return Job(cell, cell_dir, spec_path, id=str(proc.pid), log=log_path, started=started,
                   data={"proc": proc, "tracked": {}, "marker": marker, "deadline": time.monotonic() + left, "timeout": timeout,
                         "spent": spent_s, "status": None, "survivors": None})

    def poll(self, job: Job) -> State:
        """Records the process tree as it grows; past the cell's timeout ends the tree (status `timeout`)."""
        proc, tracked = job.data["proc"], job.data["tracked"]
        if job.data["survivors"] is not None:
            return State(ended=True)
        if proc.poll() is None:
            now = proctree.snapshot(proc.pid)
            if now.keys() - tracked.keys():
                tracked.update(now)
                proctree.save(self._procs(job.cell_dir), tracked, job.data["marker"])
            if time.monotonic() <= job.data["deadline"]:
                return State(ended=False, state="running")
            spent = f" ({job.data['spent']:.0f} s of it predicting its memory)" if job.data["spent"] >= 0.5 else ""
            self._end(job, ("timeout", f"killed after the cell's timeout of {job.data['timeout']:g} s{spent}"),
                      grace_s=10.0)
        else:  # exited: end what it left behind
            self._end(job, None, grace_s=10.0)
        return State(ended=True)

    def cancel(self, job: Job, status: tuple[str, str]) -> None:
        if job.data["survivors"] is None:
            self._end(job, status, grace_s=5.0)

    def _end(self, job: Job, status: tuple[str, str] | None, grace_s: float) -> None:
        """End the whole tree (every descendant, whatever its session) and keep a record of any survivor."""
        proc, tracked, record = job.data["proc"], job.data["tracked"], self._procs(job.cell_dir)
        tracked.update(proctree.snapshot(proc.pid))
        survivors = proctree.terminate(tracked, grace_s=grace_s, reap=proc.poll)
        proc.wait()
        if survivors:
            proctree.save(record, survivors, job.data["marker"])
        else:
            record.unlink(missing_ok=True)
        if job.data["status"] is None:
            job.data["status"] = status
        job.data["survivors"] = survivors

    def collect(self, job: Job) -> dict:
        cell, result_path = job.cell, job.cell_dir / "result.json"
        status = job.data["status"]
        if status is None and result_path.exists():
            row = self.rows.finish(cell, json.loads(result_path.read_text()), job.log)
        else:
            cause = rank_failures.first_cause(job.cell_dir, since=job.started - 60) if status is None else None
            if cause is not None:  # a rank failed alone; torchrun stopped its peers before rank 0 wrote the result
                status = (cause["status"], f"{rank_failures.described(cause)}; the cell ended without a result")
            status = status or self._classify_exit(job.data["proc"].returncode, job.log, cell)
            row = self.rows.failure(cell, status, job.log, job.started)
        survivors = job.data["survivors"]
        if survivors:
            row["survivors"] = sorted(survivors)
            self.console.print(f"    [red]processes {sorted(survivors)} of this cell survived SIGKILL; recorded "
                                   f"in {self._procs(job.cell_dir)}, the next run ends them[/red]")
        return row

    @staticmethod
    def _classify_exit(code: int, log_path: Path, cell: Cell) -> tuple[str, str]:
        tail = "\n".join(log_tail(log_path, 60)).lower()
        signal_note = f" (signal {-code})" if code < 0 else ""
        if code in (-9, 137) or any(sign in tail for sign in OOM_SIGNS):
            limit = f" under the cell's {cell.limits.memory_gb:g} GB limit" if cell.limits.memory_gb else ""
            return "oom", f"out of memory{limit}: exited with code {code}{signal_note} without a result"
        return "error", f"exited with code {code}{signal_note} without writing a result (see the log tail)"


LAUNCHER = LocalLauncher
