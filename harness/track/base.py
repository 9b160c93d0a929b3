"""What every tracker sends, and the interface a tracker implements.

Per cell one tracker run: parameters = the spec (flattened, dotted keys); tags = run_id, grid, group, cell, status,
reason, git commit, GPU, and `phi3v_row` = `<run_id>@<finished_at>`, the row's identity, set last (a run without it
is incomplete); per-step metrics `train/<key>` from the cell's `steps.jsonl` (or, for a row from before the log
existed, its series); final metrics = the row's numeric metrics under their own names; artifacts = the cell's
result.json, spec.json, steps.jsonl and log."""

from __future__ import annotations

import json
import math
from pathlib import Path

from training_core.errors import UserError
from training_core.trackers.steps import STEPS_FILE

from ..table import flatten

STEP_KEYS = ("loss", "step_time_s", "images_per_s", "tokens_per_s", "data_wait_s", "allocated_bytes", "lr")
TAG_LIMIT = 4000  # characters of a reason kept in a tag (the whole reason is in the row and its artifacts)


class TrackerError(UserError):
    pass


def row_key(row: dict) -> str:
    """A stored row's identity in a tracker: its cell (run_id) and when it finished (a rerun is another row)."""
    return f"{row['run_id']}@{row.get('finished_at')}"


def params(spec: dict) -> dict[str, str]:
    """The spec as tracker parameters: dotted keys, values as JSON text (None -> 'null', lists as JSON)."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in flatten("spec", spec, {}).items()}


def gpu_of(row: dict) -> str:
    env = row.get("env") or {}
    names = sorted({g.get("name", "?") if isinstance(g, dict) else str(g) for g in env.get("gpus") or []})
    return ", ".join(names) or str((row.get("spec") or {}).get("gpu") or "?")


def tags(row: dict, grid: str, group: str) -> dict[str, str]:
    env = row.get("env") or {}
    out = {"run_id": row["run_id"], "grid": grid, "group": group, "cell": str(row.get("cell", "?")),
           "status": row["status"], "git_commit": str(env.get("git_sha") or "?"), "gpu": gpu_of(row)}
    if row.get("reason"):
        out["reason"] = str(row["reason"])[:TAG_LIMIT]
    return out


def final_metrics(row: dict) -> dict[str, float]:
    """The row's numeric, finite metrics (booleans and objects left out)."""
    out = {}
    for key, value in (row.get("metrics") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def read_steps(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete lines of a per-step log from byte `offset` on, and the offset after the last complete line (a
    line still being written is read next time). A line that is not a JSON object is skipped."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    steps = []
    for line in data[:end].splitlines():
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            steps.append(entry)
    return steps, offset + end


def steps_of(row: dict, cell_dir: Path | None) -> list[dict]:
    """A stored row's steps: its cell's per-step log when there is one, else the row's series (loss, step time,
    data wait) numbered from 1."""
    if cell_dir is not None and (cell_dir / STEPS_FILE).is_file():
        steps, _ = read_steps(cell_dir / STEPS_FILE)
        if steps:
            return steps
    series = row.get("series") or {}
    count = max((len(v) for v in series.values() if isinstance(v, list)), default=0)
    return [{"step": i + 1, **{k: v[i] for k, v in series.items() if isinstance(v, list) and i < len(v)}}
            for i in range(count)]


def step_values(step: dict) -> dict[str, float]:
    return {f"train/{key}": float(step[key]) for key in STEP_KEYS
            if isinstance(step.get(key), (int, float)) and not isinstance(step.get(key), bool)
            and math.isfinite(step[key])}


def artifacts(row: dict, cell_dir: Path | None) -> list[Path]:
    """The cell's own files a tracker keeps: result.json, spec.json, the per-step log and the log (regular files
    only, never through a link)."""
    found = []
    if cell_dir is not None:
        found += [cell_dir / name for name in ("result.json", "spec.json", STEPS_FILE)]
    if row.get("log"):
        found.append(Path(row["log"]))
    return [p for p in found if p.is_file() and not p.is_symlink()]


def send_row(sink: Sink, grid: str, group: str, row: dict, cell_dir: Path | None) -> dict:
    """A stored row sent whole to one tracker (a run of its own: its steps, then the row): `harness track`'s unit,
    and the runner's for a row made without a run of its own (refused, or collected from an earlier job). Returns
    what `finish_cell` returns."""
    handle = sink.start_cell(grid, group, row.get("cell"), row["run_id"], row.get("spec") or {})
    sink.log_steps(handle, steps_of(row, cell_dir))
    return sink.finish_cell(handle, row, grid, group, cell_dir)


class Sink:
    """One tracker. A method that fails raises; the caller (live, send) records it and never lets it reach a cell."""

    name = "?"

    def where(self) -> str:
        """Where rows go, for messages and the row (no credentials)."""
        raise NotImplementedError

    def start_cell(self, grid: str, group: str, cell: int | None, run_id: str, spec: dict) -> object:
        """A tracker run for a cell that starts now (or a stored row sent later); returns its handle."""
        raise NotImplementedError

    def log_steps(self, handle: object, steps: list[dict]) -> None:
        raise NotImplementedError

    def finish_cell(self, handle: object, row: dict, grid: str, group: str, cell_dir: Path | None) -> dict:
        """The row's tags, final metrics and artifacts, then its identity; returns what the row records (e.g. the
        tracker's run id)."""
        raise NotImplementedError

    def sent(self, grid: str, group: str, row: dict) -> bool:
        """Whether this row (by `row_key`) is already complete in the tracker."""
        raise NotImplementedError

    def close(self) -> None:
        """The run is over (the grid's parent run ended)."""
