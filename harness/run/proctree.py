"""The processes of a cell: its launcher and every descendant, whatever session they moved to (torchrun starts its
workers in sessions of their own, so signalling the launcher's process group misses them).

A process is identified by (PID, creation time), so a recorded PID that the system has since given to another
process is never signalled. The runner records the tree in the cell directory while the cell runs; a runner that was
killed leaves that record behind, and the next run ends what is left of it. A record is a file anyone who can write
the results directory can plant, so a recorded process is signalled by a later run only when its environment carries
the marker the runner put into the cell's environment (`MARKER`, a random value per launch, also in the record):
a process started by anyone else does not have it, whatever PID and start time the record claims.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from .. import outputs
from ..readers import UnreadableError, read_text

Procs = dict[int, float]  # PID -> creation time
MARKER = "PHI3V_CELL_MARKER"  # in the environment of every process of a cell the runner started


def new_marker() -> str:
    return secrets.token_hex(16)


def marked(procs: Procs, marker: str | None) -> Procs:
    """The recorded processes that carry `marker` in their environment (none without a marker, and none whose
    environment cannot be read)."""
    if not marker:
        return {}
    out = {}
    for pid, created in procs.items():
        try:
            if psutil.Process(pid).environ().get(MARKER) == marker:
                out[pid] = created
        except psutil.Error:
            continue
    return out


def snapshot(root: int) -> Procs:
    """`root` and all its descendants now (empty when `root` is gone)."""
    try:
        top = psutil.Process(root)
        found = [top, *top.children(recursive=True)]
    except psutil.Error:
        return {}
    out = {}
    for process in found:
        try:
            out[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return out


def alive(procs: Procs) -> Procs:
    """The recorded processes that still run (same PID and creation time, not a zombie)."""
    out = {}
    for pid, created in procs.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                out[pid] = created
        except psutil.Error:
            continue
    return out


def _signal(procs: Procs, sig: int) -> None:
    for pid in procs:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def terminate(procs: Procs, grace_s: float = 10.0, reap: Callable[[], object] | None = None) -> Procs:
    """SIGTERM every recorded process still alive, SIGKILL what is left after `grace_s`, and return what survived
    even that (empty when all ended). `reap` is called while waiting (our own child must be reaped to vanish)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        left = alive(procs)
        if not left:
            return {}
        _signal(left, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            if not alive(left):
                return {}
            time.sleep(0.05)
    return alive(procs)


def owner(path: Path) -> dict:
    """Who wrote a record: this host and the cell directory it lies in (resolved). A copy of a results group carries
    the records of the group it was copied from, which name that group's cells: they are not this group's to act on."""
    return {"host": socket.gethostname(), "cell": str(path.parent.resolve())}


def save(path: Path, procs: Procs, marker: str) -> None:
    """The record, whole or not at all and never through a link planted there (outputs.write)."""
    record = {"marker": marker, "owner": owner(path), "procs": {str(pid): created for pid, created in procs.items()}}
    outputs.write(path, json.dumps(record) + "\n")


def load(path: Path) -> tuple[str | None, Procs]:
    """(marker, processes) of a record this group wrote; (None, {}) for one that cannot be read, has no marker (nothing
    to end) or names another host's or another directory's cell (a copied group: nothing of it is ours to end). A
    record written before records named their owner is read as this group's (the marker still guards it)."""
    try:
        data = json.loads(read_text(path, "process record", limit=2**20))
        marker, procs = data["marker"], data["procs"]
        if data.get("owner", owner(path)) != owner(path):
            return None, {}
        return (marker if isinstance(marker, str) else None), {int(pid): float(c) for pid, c in procs.items()}
    except (UnreadableError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None, {}


def describe(procs: Procs) -> str:
    """'PID 123 (python -m torch.distributed.run ...), ...': what is about to be signalled, named."""
    parts = []
    for pid in sorted(procs):
        try:
            command = " ".join(psutil.Process(pid).cmdline())[:80] or psutil.Process(pid).name()
        except psutil.Error:
            command = "gone"
        parts.append(f"PID {pid} ({command})")
    return ", ".join(parts)
