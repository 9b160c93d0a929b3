"""Readings derived from a row's metrics, shared by the report, its plots and the end-of-run summary."""

from __future__ import annotations

GIB = 2**30
INPUT_BOUND_SHARE = 0.05  # a cell whose loop waited for data longer than this share of its step time


def peak_memory_gb(metrics: dict) -> float | None:
    """NVML's device peak where measured, else torch's reserved, else allocated peak, else (CPU) the process RSS."""
    for key in ("peak_mem_device_bytes", "peak_mem_reserved_bytes", "peak_mem_allocated_bytes", "peak_rss_bytes"):
        if key in metrics:
            return metrics[key] / GIB
    return None


def size_text(n: int) -> str:
    """Bytes as GiB, or MiB below one GiB (a tiny cell's peak)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def input_bound(metrics: dict) -> bool:
    return (metrics.get("data_wait_share") or 0.0) > INPUT_BOUND_SHARE  # None: not measured (strict JSON null)
