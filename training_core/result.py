"""The result row of one cell and its vocabulary (docs/ARCHITECTURE.md, "The row"), written atomically as
`DIR/result.json` by rank 0.

Statuses: ok, oom, error, timeout, unsupported, interrupted, diverged (a non-finite loss). Failures carry their
reason and whatever metrics were gathered before them. Per-step series (losses, step times) ride along under
`series`. Every file is strict JSON: a non-finite number is written as null (`strict_json`)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

STATUSES = ("ok", "oom", "error", "timeout", "unsupported", "interrupted", "diverged")
# A final row ends its cell: a rerun skips it. `interrupted` is not final: the next run repeats the cell.
FINAL = frozenset({"ok", "oom", "error", "timeout", "unsupported", "diverged"})
RETRYABLE = frozenset({"error", "timeout", "oom", "diverged"})  # final, but worth another try (--retry-failed)
RESULT_FILE = "result.json"
REASON_LIMIT = 4000  # characters of a failure reason kept in the row; the whole message is in the cell's log
LINE_REASON_LIMIT = 300  # in one line of text: the run's console line, the report summary's sentences

# The metrics' directions, for the regression gate (harness/gate): higher is better, lower is better, or exact.
HIGHER = frozenset({"images_per_s", "images_per_s_per_gpu", "samples_per_s", "tokens_per_s", "mfu", "anls",
                    "accuracy", "anls_standard", "auroc", "model_flops_per_s", "images_per_cpu_s",
                    "normalized_images_per_s", "normalized_images_per_cpu_s"})
LOWER = frozenset({"peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "peak_mem_device_bytes", "peak_rss_bytes",
                   "model_state_bytes", "step_time_s_p50", "step_time_s_p90", "loss_first", "loss_last",
                   "energy_j_per_image", "time_to_first_step_s", "data_wait_s", "data_wait_share"})
EXACT = frozenset({"trainable_params", "total_params", "measured_steps", "warmup_steps"})


# Metrics that the report, compare and the gate read as numbers: in a row they are a number or null, never text.
NUMERIC_METRICS = ("images_per_s", "tokens_per_s", "step_time_s_p50", "peak_mem_allocated_bytes",
                   "peak_mem_reserved_bytes", "peak_mem_device_bytes", "peak_rss_bytes", "mfu", "loss_first",
                   "loss_last", "anls", "accuracy", "measured_steps", "trainable_params", "model_state_bytes",
                   "data_wait_share")


@dataclass(frozen=True)
class RowKey:
    """One key a row may carry: its JSON type, the part that adds it, and what it holds."""
    name: str
    type: str
    added_by: str
    meaning: str


CELL, RUNNER, LAUNCHER, GATE = ("the cell (training_core.result.build_row)", "the runner (harness/run)",
                                "its launcher (harness/run/launchers)", "the gate, on reading passes (harness/gate)")
# Every key of a row (rows.jsonl, result.json), in the order a reader meets them. `row_problem` checks the ones
# every reader relies on; the others are optional and read with .get().
ROW_KEYS: tuple[RowKey, ...] = (
    RowKey("run_id", "str", CELL, "stable hash of the normalised spec: the cell's identity across runs"),
    RowKey("status", "str", CELL, f"one of {', '.join(STATUSES)}"),
    RowKey("reason", "str or null", CELL, f"why a cell did not finish ok (at most {REASON_LIMIT} characters)"),
    RowKey("spec", "object", CELL, "the RunSpec as JSON (training_core/spec.py)"),
    RowKey("metrics", "object", CELL, "measured numbers, units in the names (memory in bytes); null when unmeasured"),
    RowKey("series", "object", CELL, "per-step lists: loss, step_time_s, data_wait_s"),
    RowKey("env", "object", CELL, "versions, GPUs, host, world size, git sha (training_core/env.py); multi-rank GPU "
                                  "cells: nccl (version, NCCL_* settings, the transport NCCL chose: training_core/nccl.py)"),
    RowKey("started_at", "str", CELL, "ISO time the cell's process started (UTC)"),
    RowKey("finished_at", "str", CELL, "ISO time the row was made (UTC)"),
    RowKey("wall_s", "number", CELL, "seconds from the process start, imports included"),
    RowKey("artifacts", "object", CELL, "kept files, e.g. {model: <cell>/model} (run --keep-model)"),
    RowKey("unmeasured", "object", CELL, "metric -> why this cell could not measure it (e.g. mfu)"),
    RowKey("gradients", "object", CELL, "trainable parameters without a gradient in the first optimizer step"),
    RowKey("matrix", "str or null", RUNNER, "the grid's name (null in a result.json before the runner reads it)"),
    RowKey("cell", "int", RUNNER, "the cell's index in its grid"),
    RowKey("profile", "str or null", RUNNER, "the grid's profile (--profile)"),
    RowKey("log", "str or null", RUNNER, "the cell's log file"),
    RowKey("log_tail", "list[str]", RUNNER, "the log's last lines, for a row that is not ok"),
    RowKey("predicted", "object", RUNNER, "the memory estimator's prediction made before the cell ran"),
    RowKey("tracking", "object", RUNNER, "run --track: per tracker (mlflow, tensorboard), sent (where, its run) or "
                                         "failed (the error); harness track sends failed rows later"),
    RowKey("survivors", "list[int]", LAUNCHER, "local: processes of the cell that survived SIGKILL"),
    RowKey("slurm", "object", LAUNCHER, "SLURM: job id, state, exit code, whether its nodes were its own"),
    RowKey("pass", "int", GATE, "which interleaved pass of the same cells the row was measured in"),
)


def row_problem(row) -> str | None:
    """What makes `row` not a row of this schema (a result.json or a line of rows.jsonl), or None. Checked on read,
    so that a hand-edited or foreign file is reported, never half-counted."""
    if not isinstance(row, dict):
        return f"not a JSON object but {type(row).__name__}"
    if not isinstance(row.get("run_id"), str) or not row["run_id"]:
        return "no run_id (a string)"
    if row.get("status") not in STATUSES:
        return f"status {row.get('status')!r} is none of {', '.join(STATUSES)}"
    if not isinstance(row.get("spec"), dict):
        return "no spec (an object)"
    if "cell" in row and row["cell"] is not None and (not isinstance(row["cell"], int) or isinstance(row["cell"], bool)):
        return f"cell {row['cell']!r} is not a number"
    metrics = row.get("metrics")
    if metrics is None and row["status"] != "ok":
        return None
    if not isinstance(metrics, dict):
        return "no metrics (an object)" if row["status"] == "ok" else "metrics is not an object"
    for key in NUMERIC_METRICS:
        value = metrics.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metrics.{key} is {value!r}, not a number"
    for key, value in metrics.items():  # the harness writes strict JSON: NaN and Infinity are never its own
        if isinstance(value, float) and not math.isfinite(value):
            return f"metrics.{key} is {value!r}, not a finite number"
    return None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Outcome:
    """What a run gathers as it goes; failures keep what was there."""

    metrics: dict = field(default_factory=dict)
    series: dict = field(default_factory=lambda: {"loss": [], "step_time_s": [], "data_wait_s": []})
    status: str = "ok"
    reason: str | None = None
    artifacts: dict = field(default_factory=dict)  # files kept for later use, e.g. {"model": "<cell>/model"}
    unmeasured: dict = field(default_factory=dict)  # metric -> why this cell could not measure it, e.g. "mfu"
    gradients: dict | None = None  # which trainable parameters got no gradient (trackers/gradients.py)


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception: out-of-memory (CUDA or CPU) is `oom`, anything else `error`."""
    import torch

    message = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "oom", message
    text = str(exc).lower()
    if isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text):
        return "oom", message
    return "error", message




def clip_reason(reason: str | None, limit: int = REASON_LIMIT) -> str | None:
    """A reason of at most `limit` characters (a 50 MB exception message would otherwise ride along in every row,
    report and summary); what was cut is counted, and stays in the log."""
    if reason is None or len(reason) <= limit:
        return reason
    return reason[:limit] + f" ... ({len(reason) - limit} more characters: the whole message is in the cell's log)"


def build_row(*, run_id, spec: dict, outcome: Outcome, env: dict, process_start: float, log: str | None = None) -> dict:
    """`started_at`/`wall_s` count from the process start (imports included): the cell's real cost."""
    if outcome.status not in STATUSES:
        raise ValueError(f"unknown status {outcome.status!r}")
    return {
        "run_id": run_id,
        "matrix": None,
        "status": outcome.status,
        "reason": clip_reason(outcome.reason),
        "spec": spec,
        "metrics": outcome.metrics,
        "series": outcome.series,
        "env": env,
        "started_at": datetime.fromtimestamp(process_start, UTC).isoformat(timespec="seconds"),
        "finished_at": utc_now(),
        "wall_s": round(time.time() - process_start, 3),
        "log": log,
        **({"artifacts": outcome.artifacts} if outcome.artifacts else {}),
        **({"unmeasured": outcome.unmeasured} if outcome.unmeasured else {}),
        **({"gradients": outcome.gradients} if outcome.gradients is not None else {}),
    }


class Diverged(Exception):
    """The loss became non-finite: the cell ends as `diverged`, with the step."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"non-finite loss ({loss}) at optimizer step {step}: the training diverged "
                         "(lower the learning rate, or check the data and the precision)")


def strict_json(value):
    """`value` with every NaN or infinity replaced by None (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps(data, **options) -> str:
    return json.dumps(strict_json(data), allow_nan=False, sort_keys=True, default=str, **options)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dumps(data, indent=2) + "\n")
    tmp.replace(path)
