"""Child processes the runner starts besides the cells, so that the runner itself never imports torch: the
environment rows record (`training_core.env`) and each cell's memory prediction (`training_core.estimate`). Both
run like a cell: from this checkout, with it first on PYTHONPATH."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path

from ..paths import ROOT
from .command import shell

PREDICTED_FILE = "predicted.json"  # the cell's memory prediction, made before it started, for its row


def cell_env() -> dict[str, str]:
    """The environment a cell process starts with: this checkout first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def child_json(cmd: list[str], timeout: float) -> tuple[dict | None, str]:
    """The JSON object a `python -m ...` child prints last on stdout (run like a cell: this checkout first), or None
    and what went wrong."""
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=cell_env(), capture_output=True, text=True, timeout=timeout,
                             check=False)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1]), ""
        return None, f"exit {out.returncode}: {error_line(out.stderr)}"
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def error_line(stderr: str) -> str:
    """What a child process died of: the last line of its stderr that names an exception (a traceback's last line),
    not a warning printed after it; the last line when none does."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR.match(line)]
    return (errors or lines or [""])[-1]


def capture_env(world_size: int) -> dict:
    """The environment rows record (`training_core.env.capture`), taken in a child process like a cell's. If that
    process fails, the rows still get what is known without torch, and why the rest is missing."""
    cmd = [sys.executable, "-m", "training_core.env", "--world-size", str(world_size)]
    found, problem = child_json(cmd, timeout=300)
    if found is not None:
        return found
    return {"world_size": world_size, "hostname": socket.gethostname(), "python": platform.python_version(),
            "capture_error": f"{shell(cmd)} failed ({problem})"}


def predict(spec_path: Path, cell_dir: Path, timeout_s: float = 900) -> dict:
    """`python -m training_core.estimate` for one cell, in training_core/estimate/predict.py's shape; past
    `timeout_s` (the cell's own timeout) it is ended and the answer says `timed_out`."""
    cmd = [sys.executable, "-m", "training_core.estimate", "--spec", str(spec_path), "--cell-dir", str(cell_dir)]
    found, problem = child_json(cmd, timeout=timeout_s)
    if problem.startswith("TimeoutExpired"):
        return {"error": f"the prediction ran past {timeout_s:g} s, the cell's timeout", "timed_out": True}
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
