"""The cell's per-step log, streamed as it trains: rank 0 appends one JSON line per optimizer step to
`<out>/steps.jsonl` (step, loss, step time, images/s, tokens/s of that step on this rank x ranks, allocated memory,
learning rate), flushed at once so a reader (the harness's experiment trackers, harness/track) sees each step while
the cell runs. A line is a few hundred bytes written to a local file, no fsync: it costs the step nothing measurable.
A write that fails (disk full) stops the log with one warning; it never fails the cell."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STEPS_FILE = "steps.jsonl"


class StepLog:
    """A context manager; `write(...)` once per optimizer step. Inactive (writes nothing) off rank 0."""

    def __init__(self, out: Path, active: bool, world_size: int = 1, resumed: bool = False):
        self.path = out / STEPS_FILE
        self.active, self.world_size, self.resumed = active, world_size, resumed
        self.file = None

    def __enter__(self) -> StepLog:
        if self.active:
            try:  # a resumed cell continues its log; a fresh one starts it
                self.file = self.path.open("a" if self.resumed else "w", encoding="utf-8")
            except OSError as exc:
                self._stop(exc)
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _stop(self, exc: OSError) -> None:
        print(f"warning: the per-step log {self.path} is not written any further ({exc}); the cell goes on",
              file=sys.stderr)
        self.file = None

    def write(self, step: int, loss: float, seconds: float, images: int, tokens: int, data_wait_s: float,
              allocated_bytes: int | None, lr: float | None) -> None:
        if self.file is None:
            return
        line = {"step": step, "time": round(time.time(), 3), "loss": loss, "step_time_s": seconds,
                "images_per_s": images * self.world_size / seconds if seconds > 0 else None,
                "tokens_per_s": tokens * self.world_size / seconds if seconds > 0 else None,
                "data_wait_s": data_wait_s, "allocated_bytes": allocated_bytes, "lr": lr}
        try:
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
        except OSError as exc:
            self._stop(exc)
