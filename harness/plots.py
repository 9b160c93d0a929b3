"""Report plots (matplotlib, PNG): throughput by strategy and attention, peak memory, scaling with nodes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .measures import peak_memory_gb  # noqa: E402

METADATA = {"Software": None}  # no library version in the file: the same rows give the same bytes


def _label(line) -> str:
    s = line.row["spec"]
    attention = "flash" if s["attention"] == "flash_attention_2" else s["attention"]
    return f"{s['strategy']}\n{attention} {s['precision']}\n{s['nodes']} node(s)"


def _bars(ax, labels, measured, documented, ylabel: str) -> None:
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [m or 0 for m in measured], width=0.4, label="measured")
    if any(d is not None for d in documented):
        ax.bar([x + 0.2 for x in xs], [d or 0 for d in documented], width=0.4, label="documented")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend()


def write_plots(lines, directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    ok = [line for line in lines if line.row["status"] == "ok"]
    if not ok:
        return []
    labels = [_label(line) for line in ok]
    written = []

    def doc(line, key):
        return line.ref.values[key].value if line.ref and key in line.ref.values else None

    fig, ax = plt.subplots(figsize=(max(6, len(ok) * 0.9), 4))
    _bars(ax, labels, [line.row["metrics"].get("images_per_s") for line in ok], [doc(line, "images_per_s") for line in ok],
          "images/s")
    ax.set_title("Throughput by strategy and attention")
    written.append(_save(fig, directory / "throughput.png"))

    fig, ax = plt.subplots(figsize=(max(6, len(ok) * 0.9), 4))
    _bars(ax, labels, [peak_memory_gb(line.row["metrics"]) for line in ok], [doc(line, "peak_memory_gb") for line in ok],
          "peak memory (GiB; CPU: RSS)")
    ax.set_title("Peak memory")
    written.append(_save(fig, directory / "memory.png"))

    scaling = _scaling_points(ok)
    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in scaling.items():
            nodes = [n for n, _ in points]
            ax.plot(nodes, [v for _, v in points], marker="o", label=name)
            base_nodes, base_value = points[0]
            ax.plot(nodes, [base_value * n / base_nodes for n in nodes], linestyle="--", color="grey")
        ax.set_xlabel("nodes")
        ax.set_ylabel("images/s")
        ax.set_title("Scaling with nodes (dashed: ideal)")
        ax.legend(fontsize=7)
        written.append(_save(fig, directory / "scaling.png"))
    return [Path(p).name for p in written]


def _scaling_points(lines) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        s = line.row["spec"]
        key = f"{s['strategy']} {s['attention']} {s['precision']}"
        series.setdefault(key, []).append((s["nodes"], line.row["metrics"]["images_per_s"]))
    return {k: sorted(v) for k, v in series.items() if len({n for n, _ in v}) > 1}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=METADATA)
    plt.close(fig)
    return str(path)
