"""`python -m harness report RESULTS_DIR [--out FILE]`: markdown (jinja2) beside the documented numbers.

A report is a pure function of the stored rows: the same rows give byte-identical markdown (no clock, stable
order). Speed cells get the guide's table layout with measured beside documented (images/s, speedup against the
table's baseline row, peak memory, implied MFU, difference and status); accuracy cells get before/after beside the
documented value; failed, OOM, timed-out and unsupported cells are listed with their reasons; the environment and
the grid come last; plots (PNG) are written beside the markdown and linked.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from training_core.errors import UserError
from training_core.result import clip_reason

from .. import outputs
from ..outputs import plain, table_cell
from ..paths import REPORTS, TEMPLATES
from ..prices import Prices, load_prices
from ..rows import INPUT_BOUND_SHARE, UNREAD, input_bound, on_sockets, peak_memory_gb, repeat_key, size_text
from ..store import RowStore, StoreError, check_component
from ..store import group_dirs as store_groups
from .cost import measured_costs
from .cost import sources as cost_sources
from .documented import RefRow, load_references
from .engines import engines_table
from .guide import Comparability, compare, diff_percent, documented_mfu, measured_gpu, model_family, status
from .index import META_SUFFIX
from .summary import NOISY_CV, cell_ranges, grouped_comparability, summary, variability

REPORT_REASON_LIMIT = 500  # characters of a failure reason in a report's table (the row keeps up to 4000)


class ReportError(UserError):
    """Nothing to report, worded for the user (names the directory)."""


def latest_rows(store: RowStore) -> list[dict]:
    """The newest row of each cell (RowStore.latest: the rule compare and baseline use too)."""
    rows, _ = store.latest(drop=UNREAD)
    return sorted(rows, key=lambda r: (r.get("cell") or 0, str(r.get("run_id")), r.get("pass") or 0))


def own_rows(rows: list[dict], group_dir: Path) -> tuple[str, list[dict], dict[str, list]]:
    """The group's grid, its rows, and the rows of other grids by grid name (a row copied in from another grid's
    store would otherwise retitle the report and sit in its tables). The grid is the group folder's parent when rows
    name it (`results/runs/<grid>/<group>`), else the name most rows carry."""
    names = Counter(str(r["matrix"]) for r in rows if r.get("matrix"))
    grid = group_dir.parent.name if (group_dir.parent.name in names or not names) else names.most_common(1)[0][0]
    own, foreign = [], {}
    for row in rows:
        if not row.get("matrix") or str(row["matrix"]) == grid:
            own.append(row)
        else:
            foreign.setdefault(str(row["matrix"]), []).append(row.get("cell", "?"))
    return grid, own, foreign


def _cells_text(cells: list) -> str:
    return ("cell " if len(cells) == 1 else "cells ") + ", ".join(map(str, cells[:10])) + (
        f" and {len(cells) - 10} more" if len(cells) > 10 else "")


@dataclass
class SpeedLine:
    comparison: Comparability
    speedup: float | None
    doc_mfu: float | None

    @property
    def row(self) -> dict:
        return self.comparison.row

    @property
    def ref(self) -> RefRow | None:
        return self.comparison.ref


def _baseline(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["status"] == "ok" and "images_per_s" in r["metrics"]]
    return ok[0] if ok else None


def speed_lines(rows: list[dict], refs: dict[str, RefRow]) -> tuple[list[SpeedLine], dict | None]:
    baseline = _baseline(rows)
    lines = []
    for row in rows:
        ref = refs.get(row["spec"].get("reference") or "")
        images = row["metrics"].get("images_per_s")
        speedup = images / baseline["metrics"]["images_per_s"] if images is not None and baseline else None
        lines.append(SpeedLine(compare(row, ref, speed=True), speedup, documented_mfu(ref) if ref else None))
    return lines, baseline


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _signed(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:+.{digits}f}%"


def _data_wait_text(metrics: dict) -> str:
    if "data_wait_share" not in metrics:
        return "-"
    text = f"{metrics['data_wait_share'] * 100:.1f}%"
    return text + " input-bound" if input_bound(metrics) else text


def _mfu_text(spec: dict, metrics: dict, unmeasured: dict) -> str:
    if spec["strategy"] == "qlora":
        return "n/a (4-bit)"
    if "mfu" not in metrics:
        return f"n/a ({unmeasured['mfu']})" if "mfu" in unmeasured else "n/a (no peak FLOPs)"
    return _fmt(metrics["mfu"] * 100, 1, "%")


def speed_table(lines: list[SpeedLine]) -> list[list[str]]:
    out = []
    for line in lines:
        row, ref, c = line.row, line.ref, line.comparison
        s, m = row["spec"], row["metrics"]
        doc = ref.values if ref else {}
        images, mem = m.get("images_per_s"), peak_memory_gb(m)
        verdict = (status(images, doc["images_per_s"].value, True) if c.comparable and "images_per_s" in doc
                   else ("not comparable" if row["status"] == "ok" else row["status"]))
        mfu = _mfu_text(s, m, row.get("unmeasured") or {})
        out.append([
            str(row.get("cell", "")), s["strategy"], str(s["nodes"]), str(s["nodes"] * s["gpus_per_node"]),
            "yes" if s["attention"] == "flash_attention_2" else s["attention"], s["precision"],
            str(s["global_batch"]), _fmt(images, 3), doc["images_per_s"].text(3) if "images_per_s" in doc else "-",
            _signed(diff_percent(images, doc["images_per_s"].value)) if c.comparable and "images_per_s" in doc else "-",
            _fmt(line.speedup, 2, "x"), doc["speedup"].text(2) + "x" if "speedup" in doc else "-",
            _fmt(mem, 2), doc["peak_memory_gb"].text() if "peak_memory_gb" in doc else "-",
            mfu, _fmt(line.doc_mfu and line.doc_mfu * 100, 1, "%") if line.doc_mfu is not None else "-",
            _data_wait_text(m), verdict,
        ])
    return out


def repeat_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows that differ only in their seed (`--repeats`), in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(repeat_key(row["spec"]), []).append(row)
    return list(groups.values())


def _spread(values: list[float]) -> str:
    """mean ± sample standard deviation (n), x100 like the guide's tables."""
    if len(values) == 1:
        return f"{values[0] * 100:.2f}"
    return f"{statistics.mean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f} (n={len(values)})"


@dataclass(frozen=True)
class AccuracyResult:
    """One accuracy line (a cell and its repeats) as the summary needs it: x100 like the guide."""
    cells: list[int]
    metric: str
    after: float | None
    documented: float | None
    verdict: str


def accuracy_table(rows: list[dict], refs: dict[str, RefRow],
                   results: list[AccuracyResult] | None = None) -> tuple[list[list[str]], list[Comparability]]:
    out, comparisons = [], []
    for group in repeat_groups(rows):
        row = group[0]
        ref = refs.get(row["spec"].get("reference") or "")
        c = compare(row, ref, speed=False)
        comparisons.append(c)
        s, m = row["spec"], row["metrics"]
        metric = "anls" if "anls" in m or (ref and "anls" in ref.values) else "accuracy"
        afters = [r["metrics"][metric] for r in group if r["status"] == "ok" and metric in r["metrics"]]
        befores = [r["metrics"][f"{metric}_before"] for r in group if f"{metric}_before" in r["metrics"]]
        after = statistics.mean(afters) if afters else None
        doc = ref.values.get(metric) if ref else None
        verdict = status(after * 100 if after is not None else None, doc.value if doc else None, True) \
            if c.comparable else ("not comparable" if row["status"] == "ok" else row["status"])
        extra = []
        if "anls_standard" in m:
            extra.append(f"standard ANLS {m['anls_standard'] * 100:.2f}")
        if "auroc" in m:
            extra.append(f"AUROC {m['auroc']:.3f}")
        cells = ", ".join(str(r.get("cell", "")) for r in group)
        if results is not None:
            results.append(AccuracyResult([r.get("cell", 0) for r in group], metric,
                                           after * 100 if after is not None else None, doc.value if doc else None,
                                           verdict))
        out.append([
            cells, s["task"], s["strategy"], s["precision"], f"{s['lr']:g}", f"{s['epochs']:g}",
            metric, _spread(befores) if befores else "-", _spread(afters) if afters else "-",
            doc.text(2) if doc else "-",
            f"{after * 100 - doc.value:+.2f}" if c.comparable and doc and after is not None else "-", verdict,
            "; ".join(extra) or "-",
        ])
    return out, comparisons


def memory_table(rows: list[dict], refs: dict[str, RefRow]) -> list[list[str]]:
    """Predicted beside measured, for the cells that got a prediction (training_core/estimate): the predicted
    allocated peak per rank and its phase, torch's measured allocated and reserved peaks, NVML's device peak, the
    ratio measured allocated / predicted, the documented peak and the predicted fit."""
    out = []
    for row in rows:
        p = row.get("predicted")
        if not p:
            continue
        m = row.get("metrics") or {}
        if "error" in p:
            out.append([str(row.get("cell", "")), row["spec"]["strategy"], "-", f"not estimated: {p['error']}"[:120],
                        "-", "-", "-", "-", "-", "-"])
            continue
        allocated = m.get("peak_mem_allocated_bytes")
        ref = refs.get(row["spec"].get("reference") or "")
        doc = ref.values.get("peak_memory_gb") if ref else None
        fit = (p.get("fit") or {}).get("reason", "-")
        out.append([
            str(row.get("cell", "")), row["spec"]["strategy"], row["spec"]["attention"],
            f"{size_text(p['peak_bytes'])} ({p['phase']}{'; predicted after the run' if p.get('made') else ''})",
            size_text(allocated) if allocated else "- (no CUDA allocator)",
            size_text(m["peak_mem_reserved_bytes"]) if "peak_mem_reserved_bytes" in m else "-",
            size_text(m["peak_mem_device_bytes"]) if "peak_mem_device_bytes" in m else "-",
            f"{allocated / p['peak_bytes']:.2f}" if allocated else "-",
            doc.text() if doc else "-", fit,
        ])
    return out


def environment(rows: list[dict]) -> list[tuple[str, str]]:
    env = next((r["env"] for r in rows if r.get("env")), {})
    gpus = ", ".join(sorted({g["name"] for g in env.get("gpus") or []})) or "none (CPU)"
    keys = [("git", f"{env.get('git_sha') or 'unknown'}{' (dirty)' if env.get('git_dirty') else ''}"),
            ("GPUs", f"{env.get('gpu_count', 0)} x {gpus}"), ("driver", env.get("driver") or "-"),
            ("CUDA", env.get("cuda") or "-"), ("python", env.get("python") or "-"),
            ("host", env.get("hostname") or "-")]
    keys += [(lib, env.get(lib) or "-") for lib in ("torch", "transformers", "peft", "accelerate", "deepspeed",
                                                    "bitsandbytes", "flash_attn")]
    return keys


def render(group_dir: Path, out: Path, refs: dict[str, RefRow] | None = None, plots: bool = True,
           prices: Prices | None = None) -> Path:
    import jinja2  # imported on use: only reports need it

    store = RowStore(group_dir)
    grid, rows, foreign = own_rows(latest_rows(store), group_dir)
    if not rows:
        raise ReportError(f"{group_dir}: no rows to report (run the grid first)")
    refs = refs if refs is not None else load_references()
    prices = prices if prices is not None else load_prices()
    speed_rows = [r for r in rows if r["spec"].get("mode") == "throughput"]
    accuracy_rows = [r for r in rows if r["spec"].get("mode") == "accuracy"]
    lines, baseline = speed_lines(speed_rows, refs)
    acc_results: list[AccuracyResult] = []
    acc_table, acc_comparisons = accuracy_table(accuracy_rows, refs, acc_results)
    comparisons = [line.comparison for line in lines] + acc_comparisons
    repeats = variability(rows)
    doc_mfu = {line.ref.key: line.doc_mfu for line in lines if line.ref is not None and line.doc_mfu is not None}
    assets = out.with_suffix("").name + ".assets"
    images, plot_note = [], None
    if plots and lines:
        from .plots import MAX_PLOTTED, write_plots  # matplotlib: only when plots are asked for

        images = write_plots(lines, out.parent / assets, refs)
        finished = sum(line.row["status"] == "ok" for line in lines)
        if finished > MAX_PLOTTED:
            plot_note = f"The plots show the first {MAX_PLOTTED} of the {finished} finished speed cells."
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, finalize=_shown)
    env.filters["reason"] = lambda text: table_cell(clip_reason(text or "", REPORT_REASON_LIMIT))
    from .revisions import frozen_rows_explained, measured_gradients

    revision_notes = frozen_rows_explained([line.ref for line in lines if line.ref is not None], refs)
    gradient_notes = measured_gradients(rows)
    opening = summary(rows, comparisons, doc_mfu, repeats, acc_results)
    flagged = [note for note in gradient_notes if not note.startswith("no trainable parameter")]
    if flagged:
        opening.append("Trainable parameters without a gradient in the first optimizer step: " + "; ".join(flagged)
                       + ".")
    scaler = [r for r in rows if r["status"] == "ok" and (r["metrics"] or {}).get("skipped_steps_measured")]
    if scaler:
        opening.append("fp16 loss scaler: " + "; ".join(
            f"cell {r.get('cell', '?')} skipped {r['metrics']['skipped_steps_measured']} of its "
            f"{r['metrics'].get('measured_steps', '?')} measured optimizer steps" for r in scaler)
            + " (inf/nan gradients: those steps did no update, so their times are not a full step's).")
    sockets = [r for r in rows if r["status"] == "ok" and on_sockets(r)]
    if sockets:
        opening.append(f"Over TCP sockets: {_cells_text([r.get('cell', '?') for r in sockets])} ran on several nodes "
                       "with NCCL on its Socket transport (it found no InfiniBand/RoCE, or was told not to use it); "
                       "their speed is the network's, not comparable to the guide's multi-node rows: check NCCL_IB_* / "
                       "NCCL_SOCKET_IFNAME and the fabric (env.nccl in the row says what NCCL saw).")
    if plot_note:
        opening.append(plot_note)
    if foreign:
        opening.append(f"Left out: {len(foreign)} row(s) of another grid found in this group's store ("
                       + "; ".join(f"grid {table_cell(name)}: {_cells_text(cells)}"
                                   for name, cells in foreign.items())
                       + "); a group holds one grid's cells: run that grid into its own group.")
    text = env.get_template("report.md.j2").render(
        matrix=table_cell(grid), group=table_cell(group_dir.name),
        profile=rows[0].get("profile"), speed=speed_table(lines), baseline=baseline,
        accuracy=acc_table, comparisons=comparisons, failures=[r for r in rows if r["status"] != "ok"],
        input_bound=[r for r in speed_rows if r["status"] == "ok" and input_bound(r["metrics"])],
        input_bound_share=INPUT_BOUND_SHARE,
        environment=environment(rows), rows=rows, images=[f"{assets}/{name}" for name in images],
        measured_gpu=measured_gpu, model_family=model_family,
        kept=[r for r in rows if (r.get("artifacts") or {}).get("model")],
        summary=[table_cell(line) for line in opening], comparability=grouped_comparability(comparisons),
        revision_notes=revision_notes, gradient_notes=gradient_notes, memory=memory_table(rows, refs),
        variability=repeats, noisy_cv=NOISY_CV, cell_ranges=cell_ranges, engines=engines_table(rows),
        cost=(cost_table := measured_costs(rows, refs, prices)),
        cost_sources=cost_sources(prices) if cost_table else [],
    )
    outputs.write(out, text)
    meta = {"report": out.name, "date": max((r.get("finished_at") or "") for r in rows) or None,
            "grid": grid, "group": group_dir.name,
            "hardware": f"{(rows[0].get('env') or {}).get('world_size', '?')}x {measured_gpu(rows[0].get('env') or {})}",
            "statuses": dict(sorted(Counter(r["status"] for r in rows).items()))}
    outputs.write(out.with_suffix(META_SUFFIX), json.dumps(meta, sort_keys=True, indent=1) + "\n")
    return out


def _shown(value):
    """Every value the template prints: text from rows (a reference, a reason, a path) carries no HTML and no control
    characters into the markdown."""
    return plain(value).replace("<", "&lt;") if isinstance(value, str) else value


def check_out(out: Path) -> Path:
    """A report's file: refused before any rendering if it is not ours to write (harness/outputs.py)."""
    return outputs.check(out, "--out", sidecar=out.with_suffix(META_SUFFIX))


def group_dirs(path: Path) -> list[Path]:
    """A group directory itself, every group of a matrix directory, or every group under a results root."""
    try:
        return store_groups(path)
    except StoreError as exc:
        raise ReportError(str(exc)) from None


def default_out(group_dir: Path) -> Path:
    """reports/<grid>/<group>.md, from the group's real location (`G/../G` names no folder above reports/)."""
    group_dir = group_dir.resolve()
    return REPORTS / check_component(group_dir.parent.name, "the grid's folder") / \
        f"{check_component(group_dir.name, 'the results group')}.md"


def write_reports(results_dir: Path, out: Path | None = None, plots: bool = True,
                  prices: Path | None = None) -> list[Path]:
    """`harness report`: a report per group under `results_dir` (one group with `out`), every target refused before
    any is written, then the index of every report beside them (reports/index.md; with `out`: in its folder). The
    files written, the index last."""
    from .index import index_path, write_index

    groups = group_dirs(results_dir)
    if out and len(groups) > 1:
        raise ReportError(f"--out names one file but {results_dir} holds {len(groups)} groups; drop --out")
    targets = [check_out(out or default_out(group)) for group in groups]
    folder = out.parent if out else REPORTS
    index_path(folder)
    table = load_prices(prices)
    written = [render(group, target, plots=plots, prices=table) for group, target in zip(groups, targets, strict=True)]
    return [*written, write_index(folder)]
