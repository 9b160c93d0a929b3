"""Experiment trackers: sinks that the run's rows and the cells' per-step logs are sent to, MLflow first, TensorBoard
second. Off by default; `run ... --track mlflow|tensorboard` sends each cell while it trains (its per-step log,
`steps.jsonl`, streamed by a thread of the runner) and when it ends (params, tags, final metrics, artifacts);
`track DIR --to mlflow|tensorboard` sends stored rows after the fact, each row once (found by its run_id and
finish time).

A tracker never fails or slows a cell: the cell is another process, the runner talks to the tracker from its own
thread with short timeouts, a tracker that failed once is not asked again in that run, and the failure is a warning
on the console and `tracking.<name>` in the row, so `track` can send it later.

- `base`: the sink interface, what a row sends (params, tags, metrics, artifacts), the per-step log's reader;
- `mlflow`: one MLflow run per cell under a parent run per grid and group (MLFLOW_TRACKING_URI, default an sqlite
  store in the results root);
- `tensorboard`: event files per cell under `<results>/tensorboard/<grid>/<group>/` (TENSORBOARD_LOGDIR to move it);
- `live`: the runner's side: one stream per cell, the row's `tracking` field;
- `send`: `harness track`, stored rows after the fact.
"""

from __future__ import annotations

from pathlib import Path

from .base import Sink, TrackerError

TRACKERS = ("mlflow", "tensorboard")


def make_sink(name: str, results_root: Path) -> Sink:
    """The sink of a tracker by name (its package imported only now; a missing one is a TrackerError that says what
    to install)."""
    if name not in TRACKERS:
        raise TrackerError(f"--track {name}: no such tracker; give one of {', '.join(TRACKERS)}")
    try:
        if name == "mlflow":
            from .mlflow import MlflowSink

            return MlflowSink(results_root)
        from .tensorboard import TensorBoardSink

        return TensorBoardSink(results_root)
    except ImportError as exc:
        raise TrackerError(f"tracker {name}: {exc.name or name} is not installed: make setup, or pip install -e "
                           "'.[track]'") from None


__all__ = ["TRACKERS", "Sink", "TrackerError", "make_sink"]
