"""`harness track DIR --to mlflow|tensorboard`: stored rows sent after the fact (from a cluster without network to
the team's server, or rows whose tracker failed while they ran). Idempotent: a row already complete in the tracker
(found by its run_id and finish time) is never sent again; an incomplete tracker run of the same cell (the tracker
failed while the cell ran) is replaced by the complete one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..store import RowStore, group_dirs
from . import make_sink
from .base import send_row


@dataclass
class Sent:
    to: str
    sent: list[str] = field(default_factory=list)  # row keys sent now
    already: int = 0  # rows the tracker had
    replaced: int = 0  # incomplete tracker runs replaced


def send_stored(results_dir: Path, to: str, all_runs: bool = False, results_root: Path | None = None) -> Sent:
    """Every group under `results_dir`: each cell's newest row (every stored row with `all_runs`) not yet in the
    tracker `to`. `results_root` places a local default store (default: the folder above the grids)."""
    groups = group_dirs(results_dir)
    root = results_root or _root_of(groups[0])
    sink = make_sink(to, root)
    outcome = Sent(sink.where())
    try:
        for group_dir in groups:
            store = RowStore(group_dir)
            rows = store.rows() if all_runs else store.latest()[0]
            for row in sorted(rows, key=lambda r: (r.get("cell") or 0, str(r.get("finished_at")))):
                grid = str(row.get("matrix") or group_dir.parent.name)
                if sink.sent(grid, group_dir.name, row):
                    outcome.already += 1
                    continue
                if hasattr(sink, "incomplete"):
                    for stale in sink.incomplete(grid, group_dir.name, row["run_id"]):
                        sink.drop(stale)
                        outcome.replaced += 1
                cell_dir = store.cell_dir(row["run_id"])
                cell_dir = cell_dir if cell_dir.is_dir() else None
                send_row(sink, grid, group_dir.name, row, cell_dir)
                outcome.sent.append(f"{grid}/{group_dir.name} cell {row.get('cell', '?')} {row['run_id']}")
    finally:
        sink.close()
    return outcome


def _root_of(group_dir: Path) -> Path:
    """The results root of a group (`<root>/<grid>/<group>`)."""
    return group_dir.resolve().parent.parent
