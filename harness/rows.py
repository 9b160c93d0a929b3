"""How a stored row is read, by every part that reads one (report, plots, the end-of-run console, the gate): the one
peak-memory rule, input-bound, the newest row of each cell, a cell's label, sizes."""

from __future__ import annotations

import json
from collections.abc import Iterable

from training_core.result import FINAL

GIB = 2**30
INPUT_BOUND_SHARE = 0.05  # a cell whose loop waited for data longer than this share of its step time
# The peak memory of a row, most telling first: NVML's device peak (what nvidia-smi shows: everything the process
# holds on the GPU), torch's reserved then allocated peak, and on a CPU the process's RSS.
PEAK_KEYS = (("peak_mem_device_bytes", "device"), ("peak_mem_reserved_bytes", "reserved"),
             ("peak_mem_allocated_bytes", "allocated"), ("peak_rss_bytes", "RSS"))


def peak_memory(metrics: dict) -> tuple[int | float, str] | None:
    """(bytes, which counter) of the row's peak memory by the rule above, or None when nothing was measured."""
    for key, kind in PEAK_KEYS:
        if metrics.get(key) is not None:
            return metrics[key], kind
    return None


def peak_memory_gb(metrics: dict) -> float | None:
    """The peak memory (the rule above) in GiB."""
    peak = peak_memory(metrics)
    return None if peak is None else peak[0] / GIB


def size_text(n: int) -> str:
    """Bytes as GiB, or MiB below one GiB (a tiny cell's peak)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def input_bound(metrics: dict) -> bool:
    return (metrics.get("data_wait_share") or 0.0) > INPUT_BOUND_SHARE  # None: not measured (strict JSON null)


def cell_key(row: dict) -> tuple:
    """What identifies a cell's rows in a store: its spec (run_id) and, in a stored baseline of several passes, its
    pass."""
    return row["run_id"], row.get("pass")


UNREAD = ("series", "log_tail")  # per-step series and log lines: kept in the store, read by neither report nor gate


def newest(rows: Iterable[dict], final_only: bool = False, drop: tuple[str, ...] = ()) -> tuple[dict[tuple, dict],
                                                                                            list[str]]:
    """The newest row of each cell (by `cell_key`), or with `final_only` its newest final one: a rerun's row
    supersedes the earlier one (an `interrupted` row before a final `ok` is the normal state after Ctrl-C and a
    rerun). Also the run_ids that have more than one final row (named, never counted as repeats). Keeps one row per
    cell, never the whole store, and of it not the keys in `drop` (e.g. UNREAD)."""
    latest: dict[tuple, dict] = {}
    finals: dict[tuple, int] = {}
    for row in rows:
        key, final = cell_key(row), row["status"] in FINAL
        if final or not final_only:
            latest[key] = {k: v for k, v in row.items() if k not in drop} if drop else row
        finals[key] = finals.get(key, 0) + final
    return latest, sorted({key[0] for key, n in finals.items() if n > 1})


def cell_gpus(spec: dict) -> int:
    """The GPUs a cell runs on: nodes x GPUs per node."""
    return int(spec.get("nodes") or 1) * int(spec.get("gpus_per_node") or 1)


def repeat_key(spec: dict) -> str:
    """What repeats of a cell (`--repeats`: rows that differ only in their seed) share: the spec without its seed."""
    return json.dumps({k: v for k, v in spec.items() if k != "seed"}, sort_keys=True)


def spec_label(spec: dict) -> str:
    """A cell's settings in one line: 'docvqa lora bf16 sdpa 1 8' (task, strategy, precision, attention, nodes,
    GPUs per node)."""
    keys = ("task", "strategy", "precision", "attention", "nodes", "gpus_per_node")
    return " ".join(str(spec.get(k)) for k in keys)


def cell_label(row: dict) -> str:
    """'cell 3 (lora, flash, bf16)': a row as the report's sentences name it."""
    s = row["spec"]
    attention = "flash" if s.get("attention") == "flash_attention_2" else s.get("attention")
    return f"cell {row.get('cell', '?')} ({s.get('strategy')}, {attention}, {s.get('precision')})"


def on_sockets(row: dict) -> bool:
    """A multi-node row whose NCCL talked over TCP sockets (no InfiniBand/RoCE found; training_core/nccl.py records
    the transport NCCL named): its speed is the network's, not the GPUs'."""
    nccl = (row.get("env") or {}).get("nccl") or {}
    return (row.get("spec") or {}).get("nodes", 1) > 1 and str(nccl.get("transport") or "").lower() == "socket"


def engine_of(spec: dict) -> str:
    """A stored spec's engine: its `engine`, or the recipe's for its strategy (rows from before engines were a
    setting have none)."""
    from training_core.spec import RECIPE_ENGINES

    return spec.get("engine") or RECIPE_ENGINES.get(spec.get("strategy") or "full", "?")


def checkpointing_of(spec: dict) -> str:
    """A stored spec's activation checkpointing: all, none or every-K (older rows: from gradient_checkpointing)."""
    return spec.get("activation_checkpointing") or ("all" if spec.get("gradient_checkpointing", True) else "none")
