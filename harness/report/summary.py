"""The report's first screen: what the rows show, in sentences that state their numbers.

Everything here is a pure function of the rows and the documented reference rows: nothing is said that they do not
show. The pieces:

- `summary`: did it work (cells by status), what is fastest and leanest, where the run stands against the guide
  (comparable cells within / outside ±10% of their documented row), input-bound and diverged cells, repeat groups
  too noisy for the ±10% status, and documented rows whose implied MFU is not physically plausible.
- `grouped_comparability`: cells with the same comparability reasons listed once, with ranges of cell numbers.
- `variability`: mean ± sd and the coefficient of variation of each repeated cell (`--repeats`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from training_core.result import LINE_REASON_LIMIT, clip_reason

from ..rows import INPUT_BOUND_SHARE, cell_label, input_bound, peak_memory_gb, repeat_key
from ..table import repeat_table
from .guide import TOLERANCE, Comparability, diff_percent

# A documented row is flagged when the utilisation it implies (its images/s x the analytic FLOPs per image over
# the GPUs' dense peak) is above 80%: dense matrix multiplications alone, the best case of any kernel, run at
# ~80-90% of an A100's or V100's dense peak in practice, and published large-scale training runs reach 40-60%
# MFU. A whole training step (attention, norms, the optimizer, the input pipeline) above 80% is not physically
# plausible under this FLOPs model: either the documented number or the model's assumptions (sequence length,
# crops) are off for that row.
IMPLAUSIBLE_MFU = 0.80
# Repeats whose coefficient of variation exceeds half the ±10% tolerance: two standard deviations of noise span
# the whole band, so "within tolerance" or "worse" says nothing about the code.
NOISY_CV = TOLERANCE / 2


def cell_ranges(cells: list[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> "0-3, 5, 7-8"."""
    values = sorted(set(cells))
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def _cells_word(cells: list[int]) -> str:
    return ("cell " if len(set(cells)) == 1 else "cells ") + cell_ranges(cells)


@dataclass
class RepeatStats:
    cells: list[int]
    label: str
    metric: str
    mean: float
    sd: float  # the sample standard deviation
    n: int

    @property
    def cv(self) -> float:
        return self.sd / abs(self.mean) if self.mean else float("inf")

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV


def variability(rows: list[dict]) -> list[RepeatStats]:
    """Per group of repeats (rows that differ only in their seed, `--repeats`; in order of first appearance) with two
    or more finished rows: the spread of images/s (speed cells) or of the final metric (accuracy cells)."""
    if len({repeat_key(r["spec"]) for r in rows}) == len(rows):
        return []  # no repeats: nothing to aggregate (and pandas is not loaded: the stock GPU image has none)
    frame = repeat_table(rows)
    ok = frame[frame["status"] == "ok"]
    groups = ok.groupby("repeat", sort=True).agg(
        cells=("cell", list), finished=("cell", "size"), label=("label", "first"), metric=("metric", "first"),
        n=("value", "count"), mean=("value", "mean"), sd=("value", "std"))
    groups = groups[(groups["finished"] >= 2) & (groups["n"] >= 2)]
    return [RepeatStats(g.cells, g.label, g.metric, float(g.mean), float(g.sd), int(g.n))
            for g in groups.itertuples()]


@dataclass
class ComparabilityGroup:
    cells: list[int]
    comparable: bool
    reasons: str
    notes: str
    references: list[tuple[str, list[int]]]  # documented row -> its cells, when a group has several
    described: dict[str, str]  # documented row -> "(model, 8xA100)"

    @property
    def text(self) -> str:
        head = _cells_word(self.cells)
        if len(self.references) == 1 and self.references[0][0]:
            key = self.references[0][0]
            head += f" vs `{key}` ({self.described[key]})"
        elif len(self.references) > 1:
            head += " (" + "; ".join(f"{_cells_word(cells)} vs `{key}`" for key, cells in self.references) + ")"
        body = "comparable" if self.comparable else f"not comparable: {self.reasons}"
        return f"{head}: {body}" + (f". Note: {self.notes}" if self.notes else "")


def grouped_comparability(comparisons: list[Comparability]) -> list[ComparabilityGroup]:
    """Cells with the same verdict, reasons and notes form one line; the documented rows they face are named per
    cell range only where they differ."""
    groups: dict[tuple, dict[str, list[int]]] = {}
    described = {}
    for c in comparisons:
        key = (c.comparable, c.reason_text, "; ".join(c.notes))
        groups.setdefault(key, {}).setdefault(c.ref.key if c.ref else "", []).append(c.row.get("cell", 0))
        if c.ref:
            described[c.ref.key] = f"{c.ref.model}, {c.ref.gpus}x{c.ref.gpu or 'GPU'}"
    out = []
    for (comparable, reasons, notes), refs in groups.items():
        cells = [cell for cells in refs.values() for cell in cells]
        out.append(ComparabilityGroup(sorted(cells), comparable, reasons, notes, list(refs.items()), described))
    return sorted(out, key=lambda g: g.cells[0])


def _fastest_and_leanest(speed_rows: list[dict]) -> list[str]:
    ok = [r for r in speed_rows if r["status"] == "ok" and r["metrics"].get("images_per_s")]
    if not ok:
        return []
    fastest = max(ok, key=lambda r: r["metrics"]["images_per_s"])
    slowest = min(ok, key=lambda r: r["metrics"]["images_per_s"])
    lines = [f"Fastest: {cell_label(fastest)} at {fastest['metrics']['images_per_s']:.4g} images/s"
             + (f", {fastest['metrics']['images_per_s'] / slowest['metrics']['images_per_s']:.2f}x the slowest, "
                f"{cell_label(slowest)} ({slowest['metrics']['images_per_s']:.4g} images/s)." if len(ok) > 1 else ".")]
    with_memory = [r for r in ok if peak_memory_gb(r["metrics"]) is not None]
    if with_memory:
        leanest = min(with_memory, key=lambda r: peak_memory_gb(r["metrics"]))
        heaviest = max(with_memory, key=lambda r: peak_memory_gb(r["metrics"]))
        kind = "GiB peak memory" if (leanest.get("env") or {}).get("gpus") else "GiB peak RSS (CPU)"
        text = f"Leanest: {cell_label(leanest)} at {peak_memory_gb(leanest['metrics']):.2f} {kind}"
        if len(with_memory) > 1:
            text += f"; the most: {cell_label(heaviest)} at {peak_memory_gb(heaviest['metrics']):.2f}"
        lines.append(text + ".")
    return lines


def _against_the_guide(comparisons: list[Comparability]) -> str:
    speed = [c for c in comparisons if c.row["spec"].get("mode") == "throughput"]
    comparable = [c for c in speed if c.comparable and "images_per_s" in c.ref.values]
    if not speed:
        return ""
    if not any(c.ref for c in speed):
        return (f"Against the guide: none of the {len(speed)} speed cell(s) refers to a documented row (no "
                "`references` in the grid): nothing to compare.")
    if not comparable:
        reasons = Counter(r.split(":")[0] for c in speed for r in c.reasons)
        common = ", ".join(name for name, _ in reasons.most_common(4))
        return (f"Against the guide: none of the {len(speed)} speed cell(s) is comparable with a documented row "
                f"(differences: {common}; see Comparability), so no ±{TOLERANCE:.0%} verdict is given; the relative "
                "plots compare the run's shape (speedup and memory over its first cell) with the guide's.")
    diffs = {c.row.get("cell", 0): diff_percent(c.row["metrics"].get("images_per_s"),
                                                c.ref.values["images_per_s"].value) for c in comparable}
    inside = sorted(cell for cell, d in diffs.items() if d is not None and abs(d) <= TOLERANCE * 100)
    outside = sorted(cell for cell, d in diffs.items() if d is not None and abs(d) > TOLERANCE * 100)
    text = (f"Against the guide: {len(comparable)} of {len(speed)} speed cell(s) are comparable; {len(inside)} "
            f"within ±{TOLERANCE:.0%} of their documented images/s" + (f" ({_cells_word(inside)})" if inside else ""))
    if outside:
        text += f", {len(outside)} outside: " + ", ".join(f"cell {cell} {diffs[cell]:+.1f}%" for cell in outside)
    return text + "."


def _accuracy_against_the_guide(results) -> str:
    if not results:
        return ""
    judged = [r for r in results if r.verdict in ("within tolerance", "better", "worse")]
    if not judged:
        return (f"Accuracy against the guide: none of the {len(results)} result(s) is comparable with a documented "
                "row (see Comparability), so no ±10% verdict is given.")
    parts = [f"{_cells_word(r.cells)} {r.metric} {r.after:.2f} vs {r.documented:.2f} documented ({r.verdict})"
             for r in judged]
    inside = sum(r.verdict == "within tolerance" for r in judged)
    return (f"Accuracy against the guide: {len(judged)} of {len(results)} result(s) comparable, {inside} within "
            f"±{TOLERANCE:.0%}: " + "; ".join(parts) + ".")


def summary(rows: list[dict], comparisons: list[Comparability], doc_mfu: dict[str, float],
            repeats: list[RepeatStats], accuracy=()) -> list[str]:
    """The report's opening sentences. `doc_mfu`: implied MFU of each documented row the run refers to;
    `accuracy`: the accuracy lines (report.AccuracyResult), x100 like the guide."""
    counts = Counter(r["status"] for r in rows)
    ok = counts.get("ok", 0)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: (kv[0] != "ok", kv[0])))
    lines = [f"{'All' if ok == len(rows) else f'{ok} of'} {len(rows)} cell(s) finished ok" + (
        f" ({parts})." if ok != len(rows) else ".")]
    speed_rows = [r for r in rows if r["spec"].get("mode") == "throughput"]
    lines += _fastest_and_leanest(speed_rows)
    for sentence in (_against_the_guide(comparisons), _accuracy_against_the_guide(list(accuracy))):
        if sentence:
            lines.append(sentence)
    bound = [r for r in speed_rows if r["status"] == "ok" and input_bound(r["metrics"])]
    if bound:
        shares = [r["metrics"]["data_wait_share"] * 100 for r in bound]
        lines.append(f"Input-bound (over {INPUT_BOUND_SHARE:.0%} of the step time waiting for data): "
                     f"{_cells_word([r.get('cell', 0) for r in bound])}, {min(shares):.0f}-{max(shares):.0f}% "
                     "waiting: their images/s measure the input pipeline, not training.")
    diverged = [r for r in rows if r["status"] == "diverged"]
    if diverged:
        lines.append("Diverged: " + "; ".join(
            f"{cell_label(r)}: {clip_reason(r.get('reason'), LINE_REASON_LIMIT) or 'non-finite loss'}" for r in diverged)
            + ".")
    noisy = [g for g in repeats if g.noisy]
    if noisy:
        lines.append(f"Too noisy for the ±{TOLERANCE:.0%} status (coefficient of variation over {NOISY_CV:.0%}): "
                     + "; ".join(f"{_cells_word(g.cells)} {g.metric} CV {g.cv:.1%}" for g in noisy) + ".")
    implausible = {key: value for key, value in sorted(doc_mfu.items()) if value > IMPLAUSIBLE_MFU}
    if implausible:
        lines.append(f"Implausible documented rows (implied MFU over {IMPLAUSIBLE_MFU:.0%}, above what dense "
                     "matrix multiplications alone reach): " + ", ".join(
                         f"`{key}` {value:.0%}" for key, value in implausible.items()) + ".")
    return lines
