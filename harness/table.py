"""Stored rows as a pandas table: one flat record per row (dotted `spec.` / `env.` keys, metrics under their own
names, the derived, documented and cost columns; harness/results/frame.py lists them), and the statistics of
repeated cells that the report shows. pandas is imported inside the functions: importing this module costs nothing."""

from __future__ import annotations

import json

from . import prices as cost
from .rows import GIB, cell_gpus, input_bound, peak_memory, repeat_key

WHO = ("matrix", "group", "cell", "run_id", "status", "reason", "profile", "pass", "started_at", "finished_at",
       "wall_s")


def flatten(prefix: str, value, out: dict) -> dict:
    """Nested objects as dotted keys; lists as JSON text (a cell holds one value)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value, sort_keys=True)
    else:
        out[prefix] = value
    return out


def flat_row(row: dict, group: str, refs: dict, prices: cost.Prices | None) -> dict:
    """One stored row as one flat record (the columns above)."""
    spec, metrics = row.get("spec") or {}, row.get("metrics") or {}
    out: dict = {key: row.get(key) for key in WHO}
    out["group"] = group
    flatten("spec", spec, out)
    flatten("env", row.get("env") or {}, out)
    for key, value in metrics.items():
        if not isinstance(value, (dict, list)):
            out[key] = value
    flatten("unmeasured", row.get("unmeasured") or {}, out)
    out["gpus"] = cell_gpus(spec)
    peak = peak_memory(metrics)
    out["peak_memory_gib"] = peak[0] / GIB if peak else None
    out["peak_memory_kind"] = peak[1] if peak else None
    out["input_bound"] = input_bound(metrics) if metrics else None
    predicted = row.get("predicted") or {}
    if predicted.get("peak_bytes") is not None:
        out["predicted.peak_gib"] = predicted["peak_bytes"] / GIB
        out["predicted.fits"] = (predicted.get("fit") or {}).get("fits")
    flatten("tracking", row.get("tracking") or {}, out)
    ref = refs.get(spec.get("reference") or "")
    if ref is not None:
        out["documented.key"] = ref.key
        for name, value in ref.values.items():
            out[f"documented.{name}"] = value.value
    paid = cost.cell_cost(spec, metrics.get("images_per_s"), prices) if prices is not None else None
    if paid is not None:
        out["usd_per_gpu_hour"] = paid.price.usd_per_gpu_hour
        out["price.machine"] = paid.price.machine
        out["price.source"] = paid.price.source
        out["usd_per_1k_images"] = paid.usd_per_1k_images
        out["finetune_hours"] = paid.finetune_hours
        out["finetune_usd"] = paid.finetune_usd
    return out


def rows_frame(records: list[dict]):
    """A DataFrame of flat records, the who columns first, the rest sorted by name."""
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=list(WHO))
    first = [c for c in WHO if c in frame.columns]
    return frame[first + sorted(c for c in frame.columns if c not in first)]


def repeat_table(rows: list[dict]):
    """One record per row for the statistics of repeats (`--repeats`: rows that differ only in their seed):
    `repeat` (the group's number, in order of first appearance), `cell`, `status`, `label`, `metric` (images/s for a
    speed cell; ANLS or accuracy for an accuracy cell) and its `value` (NaN when the row has none)."""
    import pandas as pd

    groups: dict[str, int] = {}
    records = []
    for row in rows:
        spec, metrics = row["spec"], row.get("metrics") or {}
        metric = "images_per_s" if spec.get("mode") == "throughput" else ("anls" if "anls" in metrics else "accuracy")
        value = metrics.get(metric)
        records.append({"repeat": groups.setdefault(repeat_key(spec), len(groups)), "cell": row.get("cell", 0),
                        "status": row["status"], "metric": metric,
                        "label": f"{spec.get('task')} {spec.get('strategy')} {spec.get('attention')} "
                                 f"{spec.get('precision')}",
                        "value": float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                        else float("nan")})
    return pd.DataFrame.from_records(records, columns=["repeat", "cell", "status", "metric", "label", "value"])
