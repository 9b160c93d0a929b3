"""The SLURM launcher: one sbatch job per cell, on the cell's own node count; a later run collects the jobs that have
ended, each checked against SLURM's own account of it (`sacct`).

What each job asks for, and why (`sbatch_script`): the cell's `--nodes` with one task per node whose `srun` gets all
the node's CPUs (torchrun's ranks and their loader workers need them); GPUs only for GPU cells; its nodes to itself
(`--exclusive`: nothing else runs beside a measurement; `--slurm-shared` opts out); `memory_gb` as `--mem`; the
cell's timeout as `--time`, rounded up and never 0 (SLURM reads 0 as no limit); a c10d rendezvous port per job (from
its id, or `--master-port`) so that jobs whose first node is the same never meet in one store. Every node first runs
`python -m harness.run.launchers.slurm_node check` (the head node's name resolves there; its GPUs match the cell).
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from training_core import rank_failures
from training_core.spec import RunSpec

from ...grid.cells import Cell
from ...paths import ROOT
from ...readers import UnreadableError, read_text
from ...store import StoreError
from ..command import node_check_line, slurm_torchrun_line
from ..options import RunOptions, SlurmOptions
from .base import Job, Launcher, State, finished_result

# --------------------------------------------------------------------------------------------------- job scripts
JOB_ID = re.compile(r"^[0-9]{1,20}$")  # what sbatch --parsable prints (a federation suffix is cut before it is kept)


def slurm_time(timeout_s: float) -> str:
    """`--time` for a timeout: whole seconds rounded up, at least 1 (`00:00:00` would mean no limit to SLURM, which
    itself counts in minutes and rounds up)."""
    total = max(1, math.ceil(timeout_s))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


# The rendezvous port of a job: from its id, so that jobs whose first node is the same never meet in one c10d store.
JOB_PORT = "$(( 20000 + SLURM_JOB_ID % 20000 ))"


def sbatch_script(spec: RunSpec, spec_path: Path, out_dir: Path, *, job_name: str, timeout_s: float,
                  workdir: Path, extra: list[str] = (), python: str = sys.executable, port: int | None = None,
                  check_hardware: bool = True, keep_model: bool = False, exclusive: bool = True,
                  memory_gb: float | None = None) -> str:
    """One job per cell on `spec.nodes` nodes, asking SLURM for what the cell uses: GPUs only for GPU cells, its
    nodes to itself (`exclusive`, so nothing else runs beside a measurement; else the CPUs its ranks need),
    `memory_gb` as `--mem` (a GPU cell on its own nodes, without it: `--mem=0`, all of each node's memory), and every CPU of each node for that node's torchrun and its loader workers. With
    `check_hardware`, every node first checks its GPUs against the cell's: a mismatch ends the job with the reason in
    result.json, as does a head node whose name does not resolve on a node. `port`: the rendezvous port (default:
    from the job id)."""
    directives = [f"--job-name={job_name}", f"--nodes={spec.nodes}", "--ntasks-per-node=1"]
    if spec.gpu.lower() != "cpu":
        directives.append(f"--gpus-per-node={spec.gpus_per_node}")
    if exclusive:
        directives.append("--exclusive")
    else:  # a rank and the recipe's 4 loader workers on a GPU; one CPU per rank (or its threads) on a CPU
        per_rank = 5 if spec.gpu.lower() != "cpu" else (spec.cpu_threads or 1)
        directives.append(f"--cpus-per-task={spec.gpus_per_node * per_rank}")
    if memory_gb:
        directives.append(f"--mem={math.ceil(memory_gb * 1024)}M")
    elif spec.gpu.lower() != "cpu" and exclusive:
        # the node's memory: with --exclusive many sites still grant only their default (a few GB per CPU), and a
        # ZeRO-2 start (8 ranks x 8.3 GB on the host) or a QLoRA base build (16.6 GB) then ends OUT_OF_MEMORY
        directives.append("--mem=0")
    directives += [f"--time={slurm_time(timeout_s)}", f"--output={out_dir}/slurm-%j.log", *extra]
    for directive in directives:  # sbatch reads these lines itself; a line break would start a shell line
        if any(not ch.isprintable() for ch in directive):
            raise ValueError(f"sbatch option {directive!r} holds a line break or control character: refused")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
             f"cd {shlex.quote(str(workdir))}",
             'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             f"rdzv_port={port if port is not None else JOB_PORT}"]
    lines.append('echo "phi3v: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, rendezvous $head_node:$rdzv_port"')
    if spec.cpu_threads is not None:  # as the local launcher sets them, for libraries that size pools at import
        lines.append(f"export OMP_NUM_THREADS={spec.cpu_threads} MKL_NUM_THREADS={spec.cpu_threads}")
    step = "srun --ntasks-per-node=1 --cpus-per-task=$SLURM_CPUS_ON_NODE "  # the node's CPUs, not one
    # every node first checks that the head node's name resolves there and, with `check_hardware`, its GPUs
    lines.append(step + node_check_line(spec, spec_path, out_dir, python, check_hardware))
    lines += [step + slurm_torchrun_line(spec, spec_path, out_dir, python, keep_model), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- SLURM's own account
WAITING = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
           "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}
# SLURM's end states that make a row a failure whatever the job's result.json says: (status, why)
ENDED_BADLY = {
    "FAILED": ("error", "failed"),
    "NODE_FAIL": ("error", "lost a node"),
    "BOOT_FAIL": ("error", "could not boot a node"),
    "DEADLINE": ("timeout", "reached its deadline"),
    "TIMEOUT": ("timeout", "reached its time limit"),
    "OUT_OF_MEMORY": ("oom", "ran out of host memory"),
    "CANCELLED": ("interrupted", "was cancelled (scancel or the scheduler; a rerun runs it again)"),
    "PREEMPTED": ("interrupted", "was preempted"),
}


def _command(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]} could not be run ({type(exc).__name__}: {exc})")


def _message(out: subprocess.CompletedProcess) -> str:
    return (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}").replace("\n", "; ")


@dataclass(frozen=True)
class SlurmAccount:
    state: str | None = None
    exit_code: str | None = None
    error: str | None = None  # sacct could not say: what failed
    name: str | None = None  # the job's name (the cell's: phi3v-<grid>-<run_id>), when sacct lists the job


# The name slurmdbd writes for a job whose record reached it without one (as_mysql_job.c: `jname = "allocation"`),
# seen here for a job that ended within a second of its start: sacct said `allocation` for a few seconds, then the
# job's own name. Never the name of a cell's job (phi3v-...): read again, then taken as "name not known yet".
PLACEHOLDER_NAME = "allocation"
PLACEHOLDER_RETRIES = 10


def slurm_account(job: str, name: str | None = None, pause_s: float = 1.0) -> SlurmAccount:
    """`_slurm_account`, read again (up to PLACEHOLDER_RETRIES times, `pause_s` apart) while accounting names the job
    with SLURM's placeholder instead of `name`; if it still does, the name is taken as unknown (None), so the job is
    judged by its state and never mistaken for someone else's."""
    account = _slurm_account(job, name)
    for _ in range(PLACEHOLDER_RETRIES):
        if account.name != PLACEHOLDER_NAME or name in (None, PLACEHOLDER_NAME):
            return account
        time.sleep(pause_s)
        account = _slurm_account(job, name)
    if account.name == PLACEHOLDER_NAME and name not in (None, PLACEHOLDER_NAME):
        account = SlurmAccount(state=account.state, exit_code=account.exit_code, name=None)
    return account


def _slurm_account(job: str, name: str | None = None) -> SlurmAccount:
    """The job's state and exit code from `sacct` (accounting: slurmdbd). When sacct cannot answer, `error` says
    what failed and how to enable accounting; a job sacct does not list yet (records appear a few seconds after
    submission and after the end) is PENDING. A job id SLURM gave out again (a controller that lost its state keeps
    counting from 1 while accounting keeps the old records, some still RUNNING) lists several records: of those named
    `name` (else of all), the newest by submit time."""
    out = _command(["sacct", "-j", job, "-X", "-n", "-P", "-o", "State,ExitCode,JobName,Submit"])
    if out.returncode:
        return SlurmAccount(error=f"sacct failed ({_message(out)}); the runner needs SLURM accounting to see how a "
                                  "job ended: AccountingStorageType=accounting_storage/slurmdbd with a running "
                                  "slurmdbd")
    records = [line.split("|") for line in out.stdout.strip().splitlines()] or [["PENDING"]]
    named = [r for r in records if name is not None and len(r) > 2 and r[2] == name] or records
    # the newest by submit time (ISO, sortable; a job left RUNNING by a lost controller is older), then by order
    fields = max(enumerate(named), key=lambda item: (item[1][3] if len(item[1]) > 3 else "", item[0]))[1]
    state = fields[0].split()[0] if fields[0] else "PENDING"  # 'CANCELLED by 0' -> CANCELLED
    return SlurmAccount(state=state, exit_code=fields[1] if len(fields) > 1 else None,
                        name=fields[2] if len(fields) > 2 and fields[2] else None)


def slurm_reason(job: str) -> str:
    """Why a job is not running yet, from `squeue` (e.g. Resources, Priority, JobHeldUser); '' if unknown."""
    out = _command(["squeue", "-h", "-j", job, "-o", "%T %r"])
    return out.stdout.strip() if out.returncode == 0 else ""


# ------------------------------------------------------------------------------------------------- partitions
@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int  # nodes in the partition
    max_nodes: int | None  # the partition's MaxNodes per job (None: unlimited)
    gpus: tuple[int, ...]  # GPUs of each node


_GPU = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def node_gpus(gres: str) -> int:
    """GPUs in a node's Gres ('gpu:8', 'gpu:a100:4(S:0-1),nvme:1'; '(null)' -> 0)."""
    return sum(int(n) for n in _GPU.findall(gres))


def partitions() -> dict[str, Partition] | None:
    """The cluster's partitions (`scontrol show partition/node`), with the default one also under ''; None when
    scontrol cannot say (then nothing is checked at submission)."""
    parts, nodes = _command(["scontrol", "-o", "show", "partition"]), _command(["scontrol", "-o", "show", "node"])
    if parts.returncode or nodes.returncode:
        return None
    gpus: dict[str, list[int]] = {}
    for line in nodes.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        for name in fields.get("Partitions", "").split(","):
            gpus.setdefault(name, []).append(node_gpus(fields.get("Gres", "")))
    found: dict[str, Partition] = {}
    for line in parts.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        name = fields.get("PartitionName")
        if not name:
            continue
        max_nodes = fields.get("MaxNodes", "UNLIMITED")
        part = Partition(name, int(fields.get("TotalNodes", "0") or 0),
                         None if not max_nodes.isdigit() else int(max_nodes), tuple(gpus.get(name, ())))
        found[name] = part
        if fields.get("Default") == "YES":
            found[""] = part
    return found


def requested_partition(sbatch_args: list[str]) -> str:
    """The partition named by --sbatch-arg (--partition=P, --partition P, -p P, -pP); '' for the default."""
    args = list(sbatch_args)
    for i, arg in enumerate(args):
        for flag in ("--partition=", "-p"):
            if arg.startswith(flag) and len(arg) > len(flag):
                return arg[len(flag):]
        if arg in ("--partition", "-p") and i + 1 < len(args):
            return args[i + 1]
    return ""


def never_starts(spec: RunSpec, partition: Partition) -> str | None:
    """Why a cell's job could never start on this partition (it would pend for ever), or None."""
    where = f"partition {partition.name!r}"
    if partition.max_nodes is not None and spec.nodes > partition.max_nodes:
        return f"the cell needs {spec.nodes} node(s) and {where} allows at most {partition.max_nodes} per job"
    if spec.gpu.lower() == "cpu":
        if spec.nodes > partition.nodes:
            return f"the cell needs {spec.nodes} node(s) and {where} has {partition.nodes}"
        return None
    enough = sum(1 for n in partition.gpus if n >= spec.gpus_per_node)
    if enough < spec.nodes:
        most = max(partition.gpus, default=0)
        return (f"the cell needs {spec.nodes} node(s) with {spec.gpus_per_node} GPU(s) each and {where} has "
                f"{enough} such node(s) (at most {most} GPU(s) on a node)")
    return None


# --------------------------------------------------------------------------------------------------- launcher
class SlurmLauncher(Launcher):
    name = "slurm"
    waits = False  # jobs queue; a later run collects them
    hardware_here = False  # checked inside each job, on its compute nodes (not here, on the login node)
    inputs_here = False

    options: SlurmOptions

    def __init__(self, options, rows, console):
        super().__init__(options, rows, console)
        self._partitions: dict[str, Partition] | None | bool = False  # False: not asked yet

    @classmethod
    def options_of(cls, options: RunOptions) -> SlurmOptions:
        return options.slurm

    @classmethod
    def refuse(cls, grid, options) -> str | None:
        if options.nodes.nnodes > 1 or options.nodes.master_addr:
            return ("--nnodes/--node-rank/--master-addr are for the local launcher; under SLURM every cell is "
                    "submitted with its own node count from the grid")
        if grid.auto_hardware:
            return (f"{grid.path}: hardware 'auto' means the GPUs of the machine that runs the grid; start it with "
                    "the local launcher on the GPU node (e.g. inside salloc/srun), not through --launcher slurm")
        return None

    @classmethod
    def group_label(cls, machine, hw) -> str:
        return hw.label  # the grid's hardware (e.g. 8xA100), not the login node's

    def _script(self, cell: Cell, cell_dir: Path, spec_path: Path) -> str:
        options = self.options
        return sbatch_script(cell.spec, spec_path.resolve(), cell_dir.resolve(),
                             job_name=self._name(cell),
                             timeout_s=options.timeout_s or cell.limits.timeout_s, workdir=ROOT,
                             extra=options.sbatch_args, check_hardware=options.check_hardware,
                             keep_model=options.keep_model, port=options.master_port,
                             exclusive=not options.shared, memory_gb=cell.limits.memory_gb)

    def dry_run(self, cell: Cell, cell_dir: Path, spec_path: Path) -> None:
        path = cell_dir / "job.sbatch"
        path.write_text(self._script(cell, cell_dir, spec_path))
        self.console.print(f"    wrote {escape(str(path))} ({cell.spec.nodes} node(s); dry run: not submitted)")

    def _job(self, cell: Cell, cell_dir: Path, spec_path: Path, job: str, started: float) -> Job:
        return Job(cell, cell_dir, spec_path, id=job, log=cell_dir / f"slurm-{job}.log", started=started)

    def resume(self, cell: Cell, cell_dir: Path, spec_path: Path, afresh: bool) -> Job | None:
        job_file = cell_dir / "slurm_job_id"
        if not job_file.exists():
            return None
        try:
            job_id = read_text(job_file, "SLURM job id", limit=64).strip()
        except UnreadableError as exc:
            raise StoreError(str(exc)) from None
        if not JOB_ID.match(job_id):  # never an argument list for scancel or sacct: `-u root`, `1,2 --signal=KILL`
            raise StoreError(f"{job_file}: {job_id[:40]!r} is not a SLURM job id (digits only); the file was edited: "
                             "remove it to submit the cell again")
        job = self._job(cell, cell_dir, spec_path, job_id, job_file.stat().st_mtime)
        job.data["name"] = self._name(cell)
        if not afresh:
            return job
        # --force / --retry-failed: an earlier job still queued or running would write into this cell beside the new
        # one, so it is cancelled first
        state = self.poll(job)
        if not state.ended and not state.problem:
            self.cancel(job, ("interrupted", "resubmitted"))
            self.console.print(f"    cancelled the cell's earlier job {job.id} ({state.state.lower()}) before "
                                   "resubmitting it")
        return None

    def submit(self, cell: Cell, cell_dir: Path, spec_path: Path, spent_s: float = 0.0) -> Job:
        # spent_s is not taken off --time: the prediction ran on this host, not in the job's allocation
        path, job_file = cell_dir / "job.sbatch", cell_dir / "slurm_job_id"
        path.write_text(self._script(cell, cell_dir, spec_path))
        # the earlier job's result, id and rank failures must not be collected as this one's
        (cell_dir / "result.json").unlink(missing_ok=True)
        for stale in cell_dir.glob(rank_failures.PATTERN):
            stale.unlink(missing_ok=True)
        job_file.unlink(missing_ok=True)
        never = self._never_starts(cell)
        if never:
            return self._refused(cell, cell_dir, spec_path, f"not submitted: {never}, so its job would pend for ever; "
                                 "submit it to a partition that has them (--sbatch-arg=--partition=...)")
        out = _command(["sbatch", "--parsable", str(path)], timeout=120)
        if out.returncode:  # this cell's error row; the other cells are still submitted
            return self._refused(cell, cell_dir, spec_path, f"sbatch refused {path}: {_message(out)}")
        job = out.stdout.strip().split(";")[0]
        if not JOB_ID.match(job):
            return self._refused(cell, cell_dir, spec_path, f"sbatch printed {job[:40]!r}, not a job id")
        job_file.write_text(job + "\n")
        self.console.print(escape(f"    submitted {path} as job {job}"))
        return self._job(cell, cell_dir, spec_path, job, job_file.stat().st_mtime)

    def _name(self, cell: Cell) -> str:
        """The cell's job name: what identifies its job to SLURM (sacct's JobName)."""
        return f"phi3v-{self.rows.grid}-{cell.spec.run_id}"

    def _refused(self, cell: Cell, cell_dir: Path, spec_path: Path, reason: str) -> Job:
        script = cell_dir / "job.sbatch"
        row = self.rows.failure(cell, ("error", reason), script, time.time())
        return Job.ended(cell, cell_dir, spec_path, row, script)

    def _never_starts(self, cell: Cell) -> str | None:
        if self._partitions is False:
            self._partitions = partitions()
        if not self._partitions:
            return None
        name = requested_partition(list(self.options.sbatch_args))
        candidates = [self._partitions[p] for p in name.split(",") if p in self._partitions]
        if not candidates:  # an unknown partition: sbatch says so
            return None
        reasons = [never_starts(cell.spec, p) for p in candidates]
        return None if any(r is None for r in reasons) else "; ".join(reasons)

    def poll(self, job: Job) -> State:
        expected = job.data.get("name") or self._name(job.cell)
        account = slurm_account(job.id, expected)
        if account.error:
            return State(ended=False, problem=f"cell {job.cell.index} (job {job.id}): {account.error}")
        if account.name is not None and account.name != expected:  # another job's id: never cancelled or collected
            return State(ended=False, problem=f"cell {job.cell.index}: job {job.id} in {job.cell_dir / 'slurm_job_id'} "
                                              f"is {account.name!r}, not this cell's job ({expected}); remove the file "
                                              "to submit the cell again")
        if account.state in WAITING:
            return State(ended=False, state=account.state, reason=slurm_reason(job.id))
        job.data["account"] = account
        return State(ended=True, state=account.state)

    def cancel(self, job: Job, status: tuple[str, str]) -> None:
        """scancel, then wait (up to a minute) until SLURM no longer lists the job as running."""
        _command(["scancel", job.id])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = _command(["squeue", "-h", "-j", job.id, "-o", "%T"])
            if out.returncode or out.stdout.strip() in ("", "CANCELLED", "COMPLETED", "FAILED"):
                return
            time.sleep(0.5)

    def collect(self, job: Job) -> dict:
        """The job's result.json checked against SLURM's account: a job SLURM ended FAILED, CANCELLED, NODE_FAIL or
        TIMEOUT is never an `ok` row; the row keeps the job id, state, exit code and whether it had its nodes to
        itself."""
        account = job.data.get("account") or slurm_account(job.id, self._name(job.cell))
        cell = job.cell
        recorded = finished_result(job.cell_dir, cell.spec.run_id)
        status, what = ENDED_BADLY.get(account.state, ("error", f"ended {account.state}"))
        ended = f"SLURM job {job.id} {what} ({account.state}, exit {account.exit_code or '?'})"
        if recorded is not None and (recorded.get("status") != "ok" or account.state not in ENDED_BADLY):
            row = self.rows.finish(cell, recorded, job.log)  # the cell's own account (a failure keeps its reason)
        else:  # no result, or an `ok` one from a job SLURM says ended badly: SLURM's account wins
            told = "although its result.json says ok" if recorded is not None \
                else "without writing a result (see the job's log)"
            cause = rank_failures.first_cause(job.cell_dir, since=job.started - 60) if recorded is None else None
            if cause is not None:  # a rank failed alone and its peers were stopped before rank 0 wrote the result
                status, told = cause["status"], f"{told}; {rank_failures.described(cause)}"
            row = self.rows.failure(cell, (status, f"{ended} {told}"), job.log, job.started)
        script = job.cell_dir / "job.sbatch"
        row["slurm"] = {"job": job.id, "state": account.state, "exit_code": account.exit_code,
                        "exclusive": "#SBATCH --exclusive" in script.read_text().splitlines() if script.exists()
                        else None}
        return row


LAUNCHER = SlurmLauncher
