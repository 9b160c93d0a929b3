"""TensorBoard: event files, one folder per cell run, under `<results>/tensorboard/<grid>/<group>/` (or
`$TENSORBOARD_LOGDIR/<grid>/<group>/`), so `tensorboard --logdir results/runs/tensorboard` shows every grid.

Scalars: `train/<key>` per optimizer step (the cell's per-step log), `final/<metric>` (the row's numeric metrics, at
the last step). Beside the events: the cell's result.json and spec.json (TensorBoard shows scalars; the files keep
the parameters and the row). `sent.jsonl` in the group's folder lists the rows written (one JSON line each), which
is how a row is found again and never written twice. Written with tensorboard's own event writer (no TensorFlow)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .base import Sink, artifacts, final_metrics, row_key, step_values

LEDGER = "sent.jsonl"


class _Cell:
    def __init__(self, folder: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.folder = folder
        self.writer = EventFileWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float], wall_time: float) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                             for k, v in values.items()])
        self.writer.add_event(event_pb2.Event(wall_time=wall_time, step=step, summary=summary))


class TensorBoardSink(Sink):
    name = "tensorboard"

    def __init__(self, results_root: Path):
        import tensorboard  # noqa: F401 - missing: make_sink says what to install, before any cell runs

        self.root = Path(os.environ.get("TENSORBOARD_LOGDIR") or Path(results_root) / "tensorboard")

    def where(self) -> str:
        return str(self.root)

    def _group(self, grid: str, group: str) -> Path:
        return self.root / grid / group

    def start_cell(self, grid, group, cell, run_id, spec):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        folder = self._group(grid, group) / f"cell{cell:03d}-{run_id}-{stamp}" if isinstance(cell, int) \
            else self._group(grid, group) / f"{run_id}-{stamp}"
        n = 1
        while folder.exists():  # two starts of one cell in the same second
            folder, n = folder.with_name(f"{folder.name.split('.')[0]}.{n}"), n + 1
        folder.mkdir(parents=True)
        return _Cell(folder)

    def log_steps(self, handle, steps):
        for step in steps:
            values = step_values(step)
            if values:
                handle.scalars(int(step["step"]), values, float(step.get("time") or time.time()))
        handle.writer.flush()

    def finish_cell(self, handle, row, grid, group, cell_dir):
        last = len((row.get("series") or {}).get("loss") or [])
        values = {f"final/{k}": v for k, v in final_metrics(row).items()}
        if values:
            handle.scalars(last, values, time.time())
        handle.writer.close()
        for path in artifacts(row, cell_dir):
            if path.name in ("result.json", "spec.json"):
                shutil.copyfile(path, handle.folder / path.name)
        with open(self._group(grid, group) / LEDGER, "a", encoding="utf-8") as ledger:
            ledger.write(json.dumps({"row": row_key(row), "run_id": row["run_id"], "dir": handle.folder.name}) + "\n")
        return {"dir": str(handle.folder)}

    def sent(self, grid, group, row):
        ledger = self._group(grid, group) / LEDGER
        if not ledger.is_file():
            return False
        key = row_key(row)
        for line in ledger.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                if json.loads(line).get("row") == key:
                    return True
            except (json.JSONDecodeError, AttributeError):
                continue
        return False
