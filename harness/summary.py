"""The end-of-run summary table (the full reports arrive with the report command)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .matrix import Grid
from .measures import input_bound
from .store import RowStore


def print_summary(console: Console, store: RowStore, grid: Grid) -> None:
    latest = {}
    for row in store.iter_rows():
        latest[row.get("run_id")] = row
    table = Table(title=escape(f"{grid.name}: {store.directory}"))
    for column in ("cell", "strategy", "precision", "attention", "nodes x GPUs", "status", "images/s", "step p50 s",
                   "data wait", "peak mem GiB", "loss first -> last", "reason"):
        table.add_column(column)
    for cell in grid.cells:
        if cell.spec is None or cell.spec.run_id not in latest:
            continue
        row = latest[cell.spec.run_id]
        m, s = row.get("metrics") or {}, cell.spec
        peak = m.get("peak_mem_allocated_bytes", m.get("peak_rss_bytes"))
        loss = (f"{m['loss_first']:.3f} -> {m['loss_last']:.3f}"
                if m.get("loss_first") is not None and m.get("loss_last") is not None else "")
        table.add_row(*map(escape, (str(cell.index), s.strategy, s.precision, s.attention,
                                    f"{s.nodes}x{s.gpus_per_node}", str(row["status"]), _num(m.get("images_per_s")),
                                    _num(m.get("step_time_s_p50"), 3), _wait(m),
                                    _num(peak / 2**30 if peak else None), loss, _note(row))))
    console.print(table)


def _note(row: dict) -> str:
    """The failure's reason, or for a cell that ran: trainable parameters that got no gradient (the check of its
    first optimizer step)."""
    flag = (row.get("gradients") or {}).get("flag")
    return (row.get("reason") or (f"warning: {flag}" if flag else ""))[:80]


def _wait(metrics: dict) -> str:
    if "data_wait_share" not in metrics:
        return ""
    return f"{metrics['data_wait_share'] * 100:.0f}%" + (" input-bound" if input_bound(metrics) else "")


def _num(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"
