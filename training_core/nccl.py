"""Which network NCCL used, recorded in every multi-rank GPU row (issue 32, item 7).

A 2-node cell whose NCCL found no InfiniBand/RoCE falls back to TCP sockets and looks like a valid, slow result. NCCL
says what it chose only in its own log, so before the process group starts a multi-rank CUDA cell asks NCCL for its
INIT and NET lines in a file per process in the cell's folder (`NCCL_DEBUG=INFO`, `NCCL_DEBUG_SUBSYS=INIT,NET`,
`NCCL_DEBUG_FILE=<cell>/nccl.<host>.<pid>.log`), unless the user set NCCL_DEBUG (then their choice stands and the
lines are looked for in the cell's log). At the end the row's `env.nccl` holds NCCL's version, the `NCCL_*`
environment the user gave (not the three set here), and the transport from NCCL's own words ("Using network IB",
"Using network Socket", or a plugin's name), or why it is not known."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

LOG_PATTERN = "nccl.*.log"
SET_HERE = ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE")
NETWORK = re.compile(r"NCCL INFO Using network (.+?)\s*$")
VERSION = re.compile(r"NCCL INFO NCCL version (\S+)")
READ_LIMIT = 4 * 2**20  # NCCL's INIT/NET lines of one process are kilobytes


def wanted(device_type: str, world_size: int) -> bool:
    """A cell whose ranks talk through NCCL: CUDA with more than one process."""
    return device_type == "cuda" and world_size > 1


def prepare(cell_dir: Path, environ=os.environ) -> list[str]:
    """Ask NCCL for its INIT and NET lines in a file of the cell (before its first communicator is made); returns the
    variables set here (none when the user set NCCL_DEBUG)."""
    if "NCCL_DEBUG" in environ:
        return []
    environ["NCCL_DEBUG"] = "INFO"
    environ["NCCL_DEBUG_SUBSYS"] = "INIT,NET"
    environ["NCCL_DEBUG_FILE"] = str(Path(cell_dir) / "nccl.%h.%p.log")  # NCCL fills in host and pid
    return list(SET_HERE)


def transport_of(lines) -> tuple[str | None, str | None]:
    """(transport, version) from NCCL log lines: the last 'Using network X' and 'NCCL version V' (None if absent)."""
    transport = version = None
    for line in lines:
        if match := NETWORK.search(line):
            transport = match.group(1)
        elif match := VERSION.search(line):
            version = match.group(1)
    return transport, version


def _lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(READ_LIMIT).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def describe(cell_dir: Path, set_here: list[str], log: Path | None = None, environ=os.environ) -> dict:
    """`env.nccl` of this process: version, the user's NCCL_* settings, the transport NCCL chose and where it was
    read (this process's own file; else any of the cell's NCCL files; else the cell's log)."""
    import torch

    out: dict = {"env": {k: v for k, v in sorted(environ.items()) if k.startswith("NCCL_") and k not in set_here}}
    try:
        out["version"] = ".".join(str(v) for v in torch.cuda.nccl.version())
    except Exception:  # a torch built without NCCL
        out["version"] = None
    own = Path(cell_dir) / f"nccl.{socket.gethostname()}.{os.getpid()}.log"
    candidates = [own, *sorted(p for p in Path(cell_dir).glob(LOG_PATTERN) if p != own)]
    if log is not None:
        candidates.append(log)
    for path in candidates:
        transport, version = transport_of(_lines(path))
        if transport:
            out.update(transport=transport, transport_from=path.name)
            out["version"] = out["version"] or version
            return out
    out["transport"] = None
    out["transport_unknown"] = ("NCCL wrote no 'Using network' line: " +
                                ("its debug file was asked for but holds none" if set_here else
                                 "NCCL_DEBUG was set by the user to a level that does not log INIT/NET") +
                                " (no communicator made, or an NCCL that words it differently)")
    return out
