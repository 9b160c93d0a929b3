"""What a run prints: the line after each cell (`headline`), elapsed and remaining time, and the end-of-run summary
table (the full reports arrive with the report command). Rows are read by harness/rows.py's rules, so the console
shows the peak the report shows."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training_core.result import LINE_REASON_LIMIT, clip_reason

from ..grid.file import Grid
from ..outputs import plain
from ..rows import GIB, input_bound, peak_memory, size_text
from ..store import RowStore


def print_summary(console: Console, store: RowStore, grid: Grid) -> None:
    latest = {row["run_id"]: row for row in store.latest()[0]}
    table = Table(title=escape(f"{grid.name}: {store.directory}"))
    for column in ("cell", "strategy", "precision", "attention", "nodes x GPUs", "status", "images/s", "step p50 s",
                   "data wait", "peak mem GiB", "loss first -> last", "reason"):
        table.add_column(column)
    for cell in grid.cells:
        if cell.spec is None or cell.spec.run_id not in latest:
            continue
        row = latest[cell.spec.run_id]
        m, s = row.get("metrics") or {}, cell.spec
        peak = peak_memory(m)
        loss = (f"{m['loss_first']:.3f} -> {m['loss_last']:.3f}"
                if m.get("loss_first") is not None and m.get("loss_last") is not None else "")
        table.add_row(*map(lambda v: escape(plain(v)), (str(cell.index), s.strategy, s.precision, s.attention,
                                    f"{s.nodes}x{s.gpus_per_node}", str(row["status"]), _num(m.get("images_per_s")),
                                    _num(m.get("step_time_s_p50"), 3), _wait(m),
                                    f"{peak[0] / GIB:.2f} ({peak[1]})" if peak else "", loss, _note(row))))
    console.print(table)


def headline(row: dict) -> str:
    """One line for a row: throughput, accuracy, the peak memory (the report's rule, with the prediction beside
    torch's allocated peak), and any flag; the reason of a row that is not ok."""
    m = row.get("metrics") or {}
    if row["status"] != "ok":
        return clip_reason(row.get("reason"), LINE_REASON_LIMIT) or ""
    parts = []
    if "images_per_s" in m:
        parts.append(f"{m['images_per_s']:.2f} images/s")
    for key in ("anls", "accuracy"):
        if key in m:
            before = m.get(f"{key}_before")
            parts.append(f"{key} {before:.3f} -> {m[key]:.3f}" if before is not None else f"{key} {m[key]:.3f}")
    peak, predicted = peak_memory(m), (row.get("predicted") or {}).get("peak_bytes")
    if peak is not None:
        allocated = m.get("peak_mem_allocated_bytes")
        beside = [f"allocated {size_text(allocated)}" if allocated and peak[1] != "allocated" else "",
                  f"predicted {size_text(predicted)}" if predicted else ""]
        parts.append(f"peak {size_text(peak[0])} {peak[1]}" + (f" ({', '.join(filter(None, beside))})"
                                                              if any(beside) else ""))
    flag = (row.get("gradients") or {}).get("flag")
    if flag:  # trainable parameters that got no gradient in the first optimizer step
        parts.append(f"warning: {flag}")
    return ", ".join(parts)


def clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


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
