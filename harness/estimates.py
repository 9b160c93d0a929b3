"""`harness estimate`: each cell's predicted peak memory (training_core/estimate), its fit on the GPUs asked for and
the guide's documented peak beside it, as a console table, JSON or a markdown report.

What the numbers are:
- predicted: torch's allocated bytes per rank at the peak of an optimizer step (from the second step on), for the
  cell's longest micro-batch, traced with fake tensors through the cell's own code; not reserved memory, not
  nvidia-smi's;
- documented: the guide's "peak GPU memory" for the row the cell points at; the guide does not say whether it is
  allocated, reserved or nvidia-smi memory, so it is shown, never used to calibrate the estimator;
- fit: the margin rule of training_core/estimate/fit.py on top of the predicted peak.
"""

from __future__ import annotations

from pathlib import Path

from harness.matrix import Grid
from harness.outputs import table_cell
from harness.reference import RefRow
from harness.runner import matches
from training_core.estimate.fit import GIB, MARGIN_RULE, fits_for

PREDICTED_IS = ("torch's allocated bytes per rank at the step's peak (from the second optimizer step on), for the "
                "cell's longest micro-batch, traced with fake tensors through the cell's own code; not reserved "
                "memory, not nvidia-smi's")
DOCUMENTED_IS = ("the guide's peak GPU memory of the row the cell points at; the guide does not say whether it is "
                 "allocated, reserved or nvidia-smi memory, so it is shown beside the prediction and never used to "
                 "calibrate it; the ratio reads the guide's GB as GiB")


def estimate_grid(grid: Grid, filters: dict, gpus: list[str], data_root: Path, progress=None) -> list[dict]:
    """One entry per selected cell: its prediction and fits, or why it has none. `progress(entry)` after each."""
    from training_core.estimate.trace import estimate_cell

    out = []
    for cell in grid.cells:
        if cell.runnable and not matches(cell, filters):
            continue
        entry = {"cell": cell.index, "status": cell.status if not cell.runnable else "estimated"}
        if not cell.runnable:
            entry["reason"] = f"not estimated: {cell.status}: {cell.reason}"
            out.append(entry)
            continue
        spec = cell.spec
        try:
            predicted = estimate_cell(spec, data_root)
        except Exception as exc:  # one cell's failure is said, the others are still estimated
            entry.update(status="error", reason=f"could not be estimated: {type(exc).__name__}: {exc}")
            out.append(entry)
            continue
        entry.update(run_id=spec.run_id, spec=spec.model_dump(mode="json"), predicted=predicted,
                     fits={g: vars(v) for g, v in fits_for(predicted["peak_bytes"], spec.world_size, spec.gpu,
                                                           gpus).items()})
        out.append(entry)
        if progress is not None:
            progress(entry)
    return out


def documented(entry: dict, refs: dict[str, RefRow]) -> tuple[str, str]:
    """The documented peak of the cell's reference row and documented / predicted ("-" when there is none)."""
    ref = refs.get((entry.get("spec") or {}).get("reference") or "")
    value = ref.values.get("peak_memory_gb") if ref else None
    if value is None or "predicted" not in entry:
        return "-", "-"
    return f"{value.text()} GB", f"{value.value * GIB / entry['predicted']['peak_bytes']:.2f}x"


COLUMNS = ("cell", "strategy", "precision", "attention", "crops", "nodes x GPUs", "ckpt", "tokens", "peak (GiB)",
           "phase", "weights", "grads", "optimizer", "activations", "buckets", "temps", "documented", "doc/pred")


def rows(entries: list[dict], refs: dict[str, RefRow]) -> tuple[list[str], list[list[str]]]:
    """The table's header (with one fit column per GPU judged) and its rows."""
    gpu_names = sorted({g for e in entries for g in e.get("fits", {})})
    out = []
    for e in entries:
        if "predicted" not in e:
            out.append([str(e["cell"]), *[""] * (len(COLUMNS) - 1), *[e["reason"] if i == 0 else ""
                                                                      for i in range(max(len(gpu_names), 1))]])
            continue
        s, p, b = e["spec"], e["predicted"], e["predicted"]["breakdown"]
        gib = lambda n: f"{n / GIB:.2f}"  # noqa: E731
        out.append([str(e["cell"]), s["strategy"], s["precision"], s["attention"], str(s["num_crops"] or "task"),
                    f"{s['nodes']}x{s['gpus_per_node']}", "on" if s["gradient_checkpointing"] else "off",
                    str(p["tokens"]), gib(p["peak_bytes"]), p["phase"], gib(b["weights"]), gib(b["gradients"]),
                    gib(b["optimizer states"]), gib(b["activations"]), gib(b.get("communication buckets", 0)),
                    gib(b["temporaries"]), *documented(e, refs),
                    *[e["fits"][g]["reason"] if g in e["fits"] else "-" for g in gpu_names]])
    header = [*COLUMNS, *[f"fits {g}?" for g in gpu_names]]
    if not gpu_names and any("predicted" not in e for e in entries):
        header.append("reason")
    return header, out


def markdown(grid: Grid, entries: list[dict], refs: dict[str, RefRow]) -> str:
    header, body = rows(entries, refs)
    profile = f" (profile {grid.profile})" if grid.profile else ""
    lines = [f"# {grid.name}{profile}: predicted peak memory per rank", "",
             f"- **predicted**: {PREDICTED_IS}.", f"- **documented**: {DOCUMENTED_IS}.",
             f"- **fit**: {MARGIN_RULE}.", "- The breakdown (weights ... temps) is at the predicted peak, in GiB.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(table_cell(v) for v in row) + " |" for row in body]
    seconds = [e["predicted"]["seconds"] for e in entries if "predicted" in e]
    if seconds:
        lines += ["", f"{len(seconds)} cells estimated in {sum(seconds):.0f} s ({sum(seconds) / len(seconds):.1f} s "
                      "per cell on the machine that wrote this)."]
    notes = sorted({n for e in entries if "predicted" in e for n in e["predicted"]["notes"]})
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
