"""A grid before it runs: `harness plan` (the expanded cells, their launch commands, optionally each cell's predicted
peak) and `harness estimate` (each cell's predicted peak memory with its breakdown, its fit on the GPUs asked for and
the guide's documented peak beside it, as a console table, JSON or a markdown report). Predictions come from the one
entry point, training_core/estimate/predict.py.

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
from typing import TYPE_CHECKING

from training_core.estimate.fit import GIB, MARGIN_RULE

from .grid.file import Grid
from .grid.select import matches
from .outputs import table_cell
from .paths import ESTIMATE_DATA
from .rows import checkpointing_of, engine_of
from .run.command import shell, torchrun_command
from .run.options import Nodes

if TYPE_CHECKING:
    from .report.documented import RefRow

PREDICTED_IS = ("torch's allocated bytes per rank at the step's peak (from the second optimizer step on), for the "
                "cell's longest micro-batch, traced with fake tensors through the cell's own code; not reserved "
                "memory, not nvidia-smi's")
DOCUMENTED_IS = ("the guide's peak GPU memory of the row the cell points at; the guide does not say whether it is "
                 "allocated, reserved or nvidia-smi memory, so it is shown beside the prediction and never used to "
                 "calibrate it; the ratio reads the guide's GB as GiB")


def estimate_grid(grid: Grid, filters: dict, gpus: list[str], data_root: Path, progress=None) -> list[dict]:
    """One entry per selected cell: its prediction (with its fits), or why it has none. `progress(entry)` after each."""
    from training_core.estimate.predict import predict

    out = []
    for cell in grid.cells:
        if cell.runnable and not matches(cell, filters):
            continue
        entry = {"cell": cell.index, "status": cell.status if not cell.runnable else "estimated"}
        if not cell.runnable:
            entry["reason"] = f"not estimated: {cell.status}: {cell.reason}"
            out.append(entry)
            continue
        predicted = predict(cell.spec, data_root, gpus=gpus)
        if "error" in predicted:  # one cell's failure is said, the others are still estimated
            entry.update(status="error", reason=f"could not be estimated: {predicted['error']}")
            out.append(entry)
            continue
        entry.update(run_id=cell.spec.run_id, spec=cell.spec.model_dump(mode="json"), predicted=predicted,
                     fits=predicted["fits"])
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


COLUMNS = ("cell", "strategy (engine)", "precision", "attention", "crops", "nodes x GPUs", "ckpt", "tokens", "peak (GiB)",
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
        out.append([str(e["cell"]), f"{s['strategy']} ({engine_of(s)})", s["precision"], s["attention"], str(s["num_crops"] or "task"),
                    f"{s['nodes']}x{s['gpus_per_node']}", checkpointing_of(s),
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


# ------------------------------------------------------------------------------------------------ harness plan
PLAN_COLUMNS = ("#", "run_id", "task", "strategy", "precision", "attention", "nodes", "GPUs", "batch", "lr", "crops",
                "reference", "status")


def plan_rows(cells, predicted: dict[int, str] | None = None) -> list[list[str]]:
    """The plan table's rows: every cell (invalid and excluded ones with their reason), and with `predicted` each
    runnable cell's predicted peak."""
    out = []
    extra = [] if predicted is None else [""]
    for c in cells:
        s = c.spec
        if s is None:
            out.append([str(c.index), "-", *[str(c.fields.get(k, "")) for k in ("task", "strategy", "precision",
                                                                                "attention")],
                        str(c.fields.get("nodes", "")), "", "", "", "", str(c.fields.get("reference", "")),
                        f"{c.status}: {c.reason}", *extra])
            continue
        strategy = s.strategy + (f" (recipe {s.recipe_revision})" if s.revision != "current" else "")
        if s.engine is not None:  # a setting beyond the recipe's: named in the plan
            strategy += f" on {s.train_engine}" + (" (reshard)" if s.fsdp2_reshard else "")
        if s.checkpointing != "all":
            strategy += f", ckpt {s.checkpointing}"
        out.append([str(c.index), s.run_id, s.task, strategy, s.precision, s.attention, str(s.nodes),
                    str(s.world_size), str(s.global_batch), f"{s.lr:g}", str(s.num_crops or "task"), s.reference or "",
                    "planned" if c.runnable else f"{c.status}: {c.reason}",
                    *([] if predicted is None else [predicted.get(c.index, "")])])
    return out


def predicted_peaks(cells, data_root: Path = ESTIMATE_DATA) -> dict[int, str]:
    """`plan --estimate`: each runnable cell's predicted peak and phase, with its fit on the cell's GPU."""
    from training_core.estimate.predict import predict

    out = {}
    for c in cells:
        if not c.runnable:
            continue
        p = predict(c.spec, data_root)
        if "error" in p:  # said in the cell's column
            out[c.index] = f"not estimated: {p['error'].split(':')[0]}"
            continue
        out[c.index] = f"{p['peak_bytes'] / GIB:.2f} GiB ({p['phase']})" + "".join(
            f", {gpu}: {verdict['reason']}" for gpu, verdict in p["fits"].items())
    return out


def launch_commands(grid: Grid, cells) -> list[tuple[int, str]]:
    """(cell, the exact command it runs) for every runnable cell, as the local launcher runs it (a multi-node cell
    with the node's rank and rendezvous as shell variables)."""
    out = []
    for c in cells:
        if not c.runnable:
            continue
        cell_dir = Path("results/runs") / grid.name / "<group>" / "cells" / c.spec.run_id
        nodes = Nodes() if c.spec.nodes == 1 else Nodes(c.spec.nodes, "$NODE_RANK", "$MASTER_ADDR", "$MASTER_PORT")
        out.append((c.index, shell(torchrun_command(c.spec, cell_dir / "spec.json", cell_dir, nodes,
                                                    python="python"))))
    return out
