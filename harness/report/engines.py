"""The report's engines section (issue 33): cells that differ only in engine and activation checkpointing, side by
side. Shown when a group's finished speed cells hold more than one (engine, checkpointing) choice.

Per cell: images/s, the speedup over the recipe's engine with the recipe's checkpointing (`all`) for the same
strategy, precision and attention in this group, torch's allocated and reserved peaks (CUDA) or the process RSS
(CPU), model-state bytes per rank, bytes each rank sends per optimizer step (training_core/communication.py: the
engine's own arithmetic, not a measurement), the data-wait share."""

from __future__ import annotations

from training_core.spec import RECIPE_ENGINES

from ..rows import checkpointing_of as _checkpointing
from ..rows import engine_of as _engine
from ..rows import size_text


def _setting(spec: dict) -> tuple[str, str]:
    engine = _engine(spec) + (" (reshard)" if spec.get("fsdp2_reshard") else "")
    return engine, _checkpointing(spec)


def _like(spec: dict) -> tuple:
    """What must be equal for two cells to be compared: everything but the engine and the checkpointing."""
    return (spec.get("strategy"), spec.get("precision"), spec.get("attention"), spec.get("nodes"),
            spec.get("gpus_per_node"), spec.get("global_batch"), spec.get("per_device_batch"), spec.get("model"),
            spec.get("num_crops"), spec.get("task"), spec.get("gpu"))


def engines_table(rows: list[dict]) -> list[list[str]]:
    """One line per finished speed cell, when the group holds more than one engine x checkpointing choice."""
    done = [r for r in rows if r["status"] == "ok" and r["spec"].get("mode") == "throughput"
            and (r.get("metrics") or {}).get("images_per_s")]
    if len({_setting(r["spec"]) for r in done}) < 2:
        return []
    recipe = {}
    for r in done:
        spec = r["spec"]
        if _engine(spec) == RECIPE_ENGINES.get(spec.get("strategy")) and _checkpointing(spec) == "all" \
                and not spec.get("fsdp2_reshard"):
            recipe.setdefault(_like(spec), r)
    out = []
    for r in sorted(done, key=lambda r: (_like(r["spec"]), _setting(r["spec"]))):
        spec, m = r["spec"], r["metrics"]
        engine, policy = _setting(spec)
        base = recipe.get(_like(spec))
        speedup = f"{m['images_per_s'] / base['metrics']['images_per_s']:.2f}x" if base else "- (no recipe cell)"
        allocated = m.get("peak_mem_allocated_bytes")
        peak = (size_text(allocated) if allocated else
                f"{size_text(m['peak_rss_bytes'])} RSS" if m.get("peak_rss_bytes") else "-")
        reserved = size_text(m["peak_mem_reserved_bytes"]) if m.get("peak_mem_reserved_bytes") else "-"
        out.append([
            str(r.get("cell", "")), spec.get("strategy", "?"), spec.get("precision", "?"), engine, policy,
            f"{m['images_per_s']:.3g}", speedup, peak, reserved,
            size_text(m["model_state_bytes"]) if m.get("model_state_bytes") else "-",
            size_text(m["comm_bytes_per_step"]) if "comm_bytes_per_step" in m else "-",
            f"{m['data_wait_share']:.1%}" if m.get("data_wait_share") is not None else "-",
        ])
    return out
