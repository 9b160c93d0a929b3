"""The runner's side of tracking (`run --track NAME`): while a cell trains, a thread of the runner reads the cell's
per-step log (`steps.jsonl`) every second and sends the new steps; when the cell's row is made, the row is sent
(tags, final metrics, artifacts) and the row records, per tracker, whether it was sent.

Nothing here can fail or slow the cell: the cell is another process, and every call to a tracker is guarded. The first
failure of a tracker is printed once as a warning and ends that tracker for the rest of the run; every row after it
says so in `tracking.<name>`, and `harness track` sends those rows later."""

from __future__ import annotations

import threading
from pathlib import Path

from training_core.trackers.steps import STEPS_FILE

from . import make_sink
from .base import Sink, read_steps, send_row

POLL_S = 1.0
ERROR_LIMIT = 500


class _Stream(threading.Thread):
    """Sends a cell's new steps to each live tracker until stopped; a failure ends that tracker."""

    def __init__(self, live: LiveTracking, handles: dict[str, object], path: Path):
        super().__init__(daemon=True, name="tracking-steps")
        self.live, self.handles, self.path = live, handles, path
        self.offset, self.stopping = 0, threading.Event()

    def send_new(self) -> None:
        steps, self.offset = read_steps(self.path, self.offset)
        if steps:
            for name, handle in list(self.handles.items()):
                self.live.guard(name, lambda s=self.live.sinks[name], h=handle: s.log_steps(h, steps))

    def run(self) -> None:
        while not self.stopping.wait(POLL_S):
            self.send_new()

    def finish(self) -> None:
        self.stopping.set()
        self.join()
        self.send_new()  # what the cell wrote after the last poll


class LiveTracking:
    def __init__(self, names: tuple[str, ...], results_root: Path, grid: str, group: str, warn=print):
        self.names, self.results_root, self.grid, self.group, self.warn = names, results_root, grid, group, warn
        self.sinks: dict[str, Sink] = {}
        self.failed: dict[str, str] = {}
        self.lock = threading.Lock()
        self.streams: dict[str, tuple[_Stream, dict[str, object]]] = {}  # run_id -> its stream and handles
        for name in names:
            self.guard(name, lambda n=name: self.sinks.__setitem__(n, make_sink(n, results_root)))

    def guard(self, name: str, call):
        """`call()`, or None after recording the tracker's first failure (never raised)."""
        if name in self.failed:
            return None
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - a tracker's failure of any kind must stay out of the run
            with self.lock:
                if name not in self.failed:
                    self.failed[name] = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
                    self.warn(f"warning: tracker {name} failed ({self.failed[name]}); the run goes on without it "
                              f"(`python -m harness track DIR --to {name}` sends the rows later)")
            return None

    def _live(self) -> list[str]:
        return [n for n in self.names if n in self.sinks and n not in self.failed]

    def begin(self, cell: int | None, run_id: str, spec: dict, cell_dir: Path) -> None:
        """A cell starts: a tracker run each, and its per-step log streamed."""
        handles = {}
        for name in self._live():
            handle = self.guard(name, lambda s=self.sinks[name]: s.start_cell(self.grid, self.group, cell, run_id,
                                                                              spec))
            if handle is not None:
                handles[name] = handle
        stream = _Stream(self, handles, cell_dir / STEPS_FILE)
        stream.start()
        self.streams[run_id] = (stream, handles)

    def end(self, row: dict, cell_dir: Path | None) -> dict:
        """The cell's row, sent to each tracker, with `tracking` saying what happened per tracker."""
        stream, handles = self.streams.pop(row["run_id"], (None, {}))
        if stream is not None:
            stream.finish()
        record = {}
        for name in self.names:
            sink = self.sinks.get(name)
            if sink is not None and name not in self.failed:
                handle = handles.get(name)
                if handle is None:  # a row made without a run of its own (refused, or collected from an earlier job)
                    sent = self.guard(name, lambda s=sink: send_row(s, self.grid, self.group, row, cell_dir))
                else:
                    sent = self.guard(name, lambda s=sink, h=handle: s.finish_cell(h, row, self.grid, self.group,
                                                                                   cell_dir))
                if sent is not None:
                    record[name] = {"status": "sent", "to": sink.where(), **sent}
                    continue
            error = self.failed.get(name, "not sent")
            record[name] = {"status": "failed", "error": error,
                            "to": sink.where() if sink is not None else None}
        return {**row, "tracking": record}

    def close(self) -> None:
        for run_id in list(self.streams):
            self.streams.pop(run_id)[0].finish()
        for name in self._live():
            self.guard(name, self.sinks[name].close)
