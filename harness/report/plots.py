"""Report plots (matplotlib, PNG): measured beside documented for comparable cells, relative (speedup and memory over a\nbaseline cell beside the guide's over its first row) for the others, scaling with nodes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..rows import peak_memory_gb  # noqa: E402

METADATA = {"Software": None}  # no library version in the file: the same rows give the same bytes
MAX_PLOTTED = 48  # cells in a plot: beyond this the bars are unreadable (and 10^5 cells make an image too large)


def _label(line) -> str:
    s = line.row["spec"]
    attention = "flash" if s["attention"] == "flash_attention_2" else s["attention"]
    return f"{s['strategy']}\n{attention} {s['precision']}\n{s['nodes']} node(s)"


def _bars(ax, labels, measured, documented, ylabel: str, names=("measured", "documented")) -> None:
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [m or 0 for m in measured], width=0.4, label=names[0])
    if any(d is not None for d in documented):
        ax.bar([x + 0.2 for x in xs], [d or 0 for d in documented], width=0.4, label=names[1])
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def write_plots(lines, directory: Path, refs: dict | None = None) -> list[str]:
    """Like with like: absolute measured-vs-documented bars for the comparable cells only; for cells that are not
    comparable, shape against shape: each cell's speedup and memory over the run's first finished cell beside the
    documented row's over the guide's first row of its table."""
    directory.mkdir(parents=True, exist_ok=True)
    ok = plotted(lines)
    if not ok:
        return []
    for stale in ("throughput.png", "memory.png", "relative_throughput.png", "relative_memory.png", "scaling.png"):
        (directory / stale).unlink(missing_ok=True)  # a re-render writes exactly the plots of these rows
    comparable = [line for line in ok if line.comparison.comparable]
    others = [line for line in ok if not line.comparison.comparable]
    written = []

    def doc(line, key):
        return line.ref.values[key].value if line.ref and key in line.ref.values else None

    if comparable:
        labels = [_label(line) for line in comparable]
        fig, ax = plt.subplots(figsize=(max(6, len(comparable) * 0.9), 4))
        _bars(ax, labels, [line.row["metrics"].get("images_per_s") for line in comparable],
              [doc(line, "images_per_s") for line in comparable], "throughput (images/s)")
        ax.set_title("Comparable cells: throughput, measured and documented")
        written.append(_save(fig, directory / "throughput.png"))
        fig, ax = plt.subplots(figsize=(max(6, len(comparable) * 0.9), 4))
        _bars(ax, labels, [peak_memory_gb(line.row["metrics"]) for line in comparable],
              [doc(line, "peak_memory_gb") for line in comparable], "peak memory per GPU (GiB)")
        ax.set_title("Comparable cells: peak memory, measured and documented")
        written.append(_save(fig, directory / "memory.png"))
    if others:
        base = ok[0]
        labels = [_label(line) for line in others]
        base_images, base_memory = base.row["metrics"]["images_per_s"], peak_memory_gb(base.row["metrics"])
        fig, ax = plt.subplots(figsize=(max(6, len(others) * 0.9), 4))
        _bars(ax, labels, [line.row["metrics"]["images_per_s"] / base_images for line in others],
              [doc(line, "speedup") for line in others], "speedup (x)",
              (f"measured: images/s over cell {base.row.get('cell', 0)}'s",
               "documented: over the guide's first row"))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title("Not comparable in absolute terms: throughput relative to a baseline", fontsize=10)
        written.append(_save(fig, directory / "relative_throughput.png"))
        if base_memory:
            first = _first_rows(refs or {})
            documented = []
            for line in others:
                head = first.get(line.ref.table) if line.ref else None
                value, head_value = doc(line, "peak_memory_gb"), head and head.values.get("peak_memory_gb")
                documented.append(value / head_value.value if value is not None and head_value else None)
            fig, ax = plt.subplots(figsize=(max(6, len(others) * 0.9), 4))
            _bars(ax, labels, [(peak_memory_gb(line.row["metrics"]) or 0) / base_memory for line in others],
                  documented, "peak memory (x)",
                  (f"measured: over cell {base.row.get('cell', 0)}'s", "documented: over the guide's first row"))
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_title("Not comparable in absolute terms: peak memory relative to a baseline", fontsize=10)
            written.append(_save(fig, directory / "relative_memory.png"))

    scaling = _scaling_points(ok)
    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in scaling.items():
            nodes = [n for n, _ in points]
            ax.plot(nodes, [v for _, v in points], marker="o", label=name)
            base_nodes, base_value = points[0]
            ax.plot(nodes, [base_value * n / base_nodes for n in nodes], linestyle="--", color="grey")
        ax.set_xlabel("nodes")
        ax.set_ylabel("throughput (images/s)")
        ax.set_title("Scaling with nodes (dashed: ideal)")
        ax.legend(fontsize=7)
        written.append(_save(fig, directory / "scaling.png"))
    return [Path(p).name for p in written]


def plotted(lines) -> list:
    """The finished cells the plots show: the first MAX_PLOTTED of them (the report says when there are more)."""
    return [line for line in lines if line.row["status"] == "ok"][:MAX_PLOTTED]


def _first_rows(refs: dict) -> dict:
    """The guide's first row of each table (speedup 1.0, the documented baseline)."""
    first: dict = {}
    for ref in refs.values():
        speedup = ref.values.get("speedup")
        if speedup is not None and speedup.value == 1.0:
            first.setdefault(ref.table, ref)
    return first


def _scaling_points(lines) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        s = line.row["spec"]
        key = f"{s['strategy']} {s['attention']} {s['precision']}"
        series.setdefault(key, []).append((s["nodes"], line.row["metrics"]["images_per_s"]))
    return {k: sorted(v) for k, v in series.items() if len({n for n, _ in v}) > 1}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=METADATA)  # small files; the same rows give the same bytes
    plt.close(fig)
    return str(path)
