"""The processes of a cell: its launcher and every descendant, whatever session they moved to (torchrun starts its
workers in sessions of their own, so signalling the launcher's process group misses them).

A process is identified by (PID, creation time), so a recorded PID that the system has since given to another
process is never signalled: the runner only ever signals processes it started. The runner records the tree in the
cell directory while the cell runs; a runner that was killed leaves that record behind, and the next run ends what
is left of it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

Procs = dict[int, float]  # PID -> creation time


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


def save(path: Path, procs: Procs) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({str(pid): created for pid, created in procs.items()}) + "\n")
    tmp.replace(path)


def load(path: Path) -> Procs:
    try:
        return {int(pid): float(created) for pid, created in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}
