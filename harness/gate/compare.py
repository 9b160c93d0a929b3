"""`python -m harness compare BASELINE CURRENT [CURRENT ...] [--rules RULES.yaml]`: the regression gate.

Cells are matched by their spec (`run_id`, a hash of the spec), never by file order; repeats of a cell are
compared by their median. Several CURRENT groups are passes: the same cells run again, interleaved, and a
normalised throughput is each pass's ratio to the baseline cell of that pass, then the median over passes (a
burst of load on a shared machine moves one pass, not the median). Each metric is compared in its direction (throughput and accuracy: higher is better;
memory, step time and loss: lower is better; parameter and step counts: exact) against a tolerance per metric,
relative or absolute, from the rules file. Beside absolute throughput, a normalised throughput (a cell's images/s
over the run's baseline cell's, measured in the same run) cancels the speed of a shared machine. Optional ordering
rules check that a metric keeps its order across cells (e.g. model-state memory across strategies).

BASELINE is a results group (rows.jsonl) or a baselines root (`results/baselines`), where the baseline matching
CURRENT's grid, model and hardware is looked up; no matching baseline is an error, never a silent pass.
Exit codes: 0 no regression, 1 regression(s), 2 no baseline / bad input.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training_core.result import EXACT, HIGHER, LOWER

from ..rows import UNREAD, spec_label
from .baseline import find_baseline, hardware_of, load_passes, load_rows
from .rules import NORMALISED, CompareError, OrderRule, Rules, Tolerance, check_rules, load_rules


@dataclass
class Finding:
    run_id: str
    label: str
    metric: str
    baseline: float
    current: float
    verdict: Literal["regression", "improvement", "unchanged"]
    allowed: str
    per_pass: tuple[float, ...] = ()  # normalised metrics: the current run's value in each pass

    @property
    def change(self) -> str:
        if self.baseline == 0:
            return f"{self.current - self.baseline:+.4g}"
        return f"{(self.current - self.baseline) / abs(self.baseline) * 100:+.2f}%"


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)
    order_failures: list[str] = field(default_factory=list)
    failed_current: list[str] = field(default_factory=list)
    estimator_failures: list[str] = field(default_factory=list)
    estimator_checked: int = 0
    passes: tuple[int, int] = (1, 1)  # passes in the baseline and in the current run

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "regression"]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.order_failures or self.failed_current or self.estimator_failures)


def judge(metric: str, base: float, cur: float, tol: Tolerance) -> tuple[str, str]:
    if metric in EXACT:
        return ("unchanged" if base == cur else "regression"), "exact"
    if tol.absolute is not None and base and tol.absolute > abs(base):
        raise CompareError(f"rules: the absolute tolerance {tol.absolute:g} of {metric} is more than the baseline's "
                           f"value itself ({base:g}): it would pass anything; use a relative tolerance (at most 1)")
    allowed = max(tol.relative * abs(base) if tol.relative is not None else 0.0, tol.absolute or 0.0)
    text = " / ".join(filter(None, [f"±{tol.relative:.0%}" if tol.relative is not None else "",
                                    f"±{tol.absolute:g}" if tol.absolute is not None else ""]))
    delta = cur - base
    if abs(delta) <= allowed:
        return "unchanged", text
    better = delta > 0 if metric in HIGHER else delta < 0
    return ("improvement" if better else "regression"), text


def medians(rows: list[dict]) -> dict[str, dict]:
    """Per run_id: the spec, the status of the newest row, and the median of every numeric metric over ok rows."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["run_id"], []).append(row)
    out = {}
    for run_id, repeats in groups.items():
        ok = [r for r in repeats if r.get("status") == "ok"]
        metrics = {}
        for key in {k for r in ok for k, v in r["metrics"].items() if isinstance(v, (int, float))}:
            values = [r["metrics"][key] for r in ok if isinstance(r["metrics"].get(key), (int, float))]
            metrics[key] = statistics.median(values)
        out[run_id] = {"spec": repeats[-1]["spec"], "status": repeats[-1]["status"], "metrics": metrics,
                       "repeats": len(ok), "cell": repeats[-1].get("cell", 0)}
    return out


def pass_of(row: dict) -> int:
    """The pass a row was measured in (rows of one results group are one pass: 1)."""
    return int(row.get("pass", 1))


def _normalise(cells: dict[str, dict], rows: list[dict], baseline_id: str | None) -> None:
    """Each throughput over the baseline cell's *of the same pass*, then the median over passes.

    The cells of one pass ran minutes apart at most, so the machine's speed then cancels in the ratio; a pass in
    which a burst of load hit one cell moves that pass's ratio only, and the median over three or more passes
    drops it. The per-pass ratios are kept in `cells[id]["passes"]` for the summary."""
    if baseline_id is None or baseline_id not in cells:
        return
    by_pass: dict[int, list[dict]] = {}
    for row in rows:
        by_pass.setdefault(pass_of(row), []).append(row)
    for metric, normalised in NORMALISED.items():
        ratios: dict[str, list[float]] = {}
        for number in sorted(by_pass):
            values = {rid: cell["metrics"].get(metric) for rid, cell in medians(by_pass[number]).items()}
            ref = values.get(baseline_id)
            if not ref:
                continue
            for rid, value in values.items():
                if value and rid in cells:
                    ratios.setdefault(rid, []).append(value / ref)
        for rid, values in ratios.items():
            cells[rid]["metrics"][normalised] = statistics.median(values)
            cells[rid].setdefault("passes", {})[normalised] = values


def _baseline_id(base: dict, cur: dict, rules: Rules) -> str | None:
    common = sorted(set(base) & set(cur), key=lambda rid: (cur[rid]["cell"], rid))
    for rid in common:
        spec = cur[rid]["spec"]
        if all(str(spec.get(k)) == str(v) for k, v in rules.baseline_cell.items()):
            if base[rid]["status"] == "ok" and cur[rid]["status"] == "ok":
                return rid
    return None


def compare_rows(baseline_rows: list[dict], current_rows: list[dict], rules: Rules) -> GateResult:
    check_rules(rules, current_rows)
    base, cur = medians(baseline_rows), medians(current_rows)
    reference = None
    if rules.baseline_cell or set(NORMALISED.values()) & set(rules.metrics):  # asked for: normalised throughput
        reference = _baseline_id(base, cur, rules)
        _normalise(base, baseline_rows, reference)
        _normalise(cur, current_rows, reference)
    if not set(base) & set(cur):
        raise CompareError(
            f"no cell in common: the baseline has {len(base)} cell(s), the current run {len(cur)}, and no spec "
            "(run_id) is in both, so nothing can be compared; after a deliberate change of the specs or the data "
            "refresh the baseline (make regress-baseline), else run the same grid and filters as the baseline")
    if rules.baseline_cell and reference is None:
        raise CompareError(f"rules.baseline_cell {rules.baseline_cell} matches no cell that is ok in both runs: "
                           "normalised throughput cannot be computed")
    result = GateResult(only_baseline=sorted(set(base) - set(cur)), only_current=sorted(set(cur) - set(base)),
                        passes=(len({pass_of(r) for r in baseline_rows}), len({pass_of(r) for r in current_rows})))
    for rid in sorted(set(base) & set(cur), key=lambda r: (cur[r]["cell"], r)):
        b, c = base[rid], cur[rid]
        label = spec_label(c["spec"])
        if c["status"] != "ok" and b["status"] == "ok":
            result.failed_current.append(f"{rid} ({label}): {b['status']} in the baseline, {c['status']} now")
            continue
        for metric in sorted(set(b["metrics"]) & set(c["metrics"])):
            if rules.only is not None and metric not in rules.only and metric not in NORMALISED.values():
                continue
            if metric not in HIGHER | LOWER | EXACT or rules.tolerance(metric).ignore:
                continue
            verdict, allowed = judge(metric, b["metrics"][metric], c["metrics"][metric], rules.tolerance(metric))
            result.findings.append(Finding(rid, label, metric, b["metrics"][metric], c["metrics"][metric], verdict,
                                           allowed, tuple(c.get("passes", {}).get(metric, ()))))
    for order in rules.orders:
        result.order_failures += check_order(cur, order)
    if rules.estimator_error is not None:
        check_estimator(result, current_rows, rules.estimator_error)
    if not result.findings and not result.failed_current and not result.order_failures \
            and not result.estimator_checked:
        raise CompareError("no metric was compared: the cells in common share no metric that the rules check "
                           "(check the rules' `metrics`/`only` against the rows)")
    return result


def check_estimator(result: GateResult, rows: list[dict], bound: float) -> None:
    """Each ok row with a prediction and torch's measured allocated peak: the prediction within `bound`."""
    for row in rows:
        predicted = (row.get("predicted") or {}).get("peak_bytes")
        measured = (row.get("metrics") or {}).get("peak_mem_allocated_bytes")
        if row.get("status") != "ok" or not predicted or not measured:
            continue
        result.estimator_checked += 1
        error = measured / predicted - 1
        if abs(error) > bound:
            result.estimator_failures.append(
                f"{row['run_id']} ({spec_label(row['spec'])}): measured allocated peak {measured / 2**30:.2f} GiB is "
                f"{error:+.1%} off the predicted {predicted / 2**30:.2f} GiB (allowed ±{bound:.0%})")
    if not result.estimator_checked:
        raise CompareError("rules.estimator_error is set but no ok row has both a prediction and a measured "
                           "allocated peak (run GPU cells with `run --estimate`), so the estimator cannot be checked")


def check_order(cells: dict[str, dict], rule: OrderRule) -> list[str]:
    """Cells sharing every spec field but `rule.by` must keep the metric's order across `rule.order`."""
    groups: dict[tuple, dict[str, float]] = {}
    for cell in cells.values():
        spec, value = cell["spec"], cell["metrics"].get(rule.metric)
        if value is None or str(spec.get(rule.by)) not in rule.order:
            continue
        key = tuple(sorted((k, str(v)) for k, v in spec.items() if k not in (rule.by, "reference", "lora_rank")))
        groups.setdefault(key, {})[str(spec.get(rule.by))] = value
    failures = []
    for values in groups.values():
        present = [name for name in rule.order if name in values]
        for first, second in zip(present, present[1:], strict=False):
            ok = values[first] > values[second] if rule.descending else values[first] < values[second]
            if not ok:
                relation = ">" if rule.descending else "<"
                failures.append(f"{rule.metric}: expected {first} {relation} {second}, got "
                                f"{values[first]:.6g} and {values[second]:.6g}")
    return failures


UNCHANGED_LISTED = 500  # unchanged metrics listed in the summary (10^5 cells would list millions)


def render_markdown(result: GateResult, baseline: Path, current: Path) -> str:
    lines = [f"# Regression check: {current} against {baseline}", ""]
    verdict = "FAILED" if result.failed else "passed"
    lines.append(f"**{verdict}**: {len(result.regressions)} regression(s), "
                 f"{sum(f.verdict == 'improvement' for f in result.findings)} improvement(s), "
                 f"{sum(f.verdict == 'unchanged' for f in result.findings)} unchanged metric(s); "
                 f"{len(result.only_baseline)} cell(s) only in the baseline, {len(result.only_current)} only now. "
                 f"Passes: {result.passes[0]} in the baseline, {result.passes[1]} now (normalised throughput: the "
                 "median over passes of each pass's ratio to its baseline cell).")
    for title, kind in (("Regressions", "regression"), ("Improvements", "improvement"), ("Unchanged", "unchanged")):
        items = [f for f in result.findings if f.verdict == kind]
        if not items:
            continue
        lines += ["", f"## {title}", "", "| cell | spec | metric | baseline | current | change | allowed | per pass |",
                  "|---|---|---|---|---|---|---|---|"]
        shown = items if kind != "unchanged" else items[:UNCHANGED_LISTED]
        lines += [f"| {f.run_id} | {f.label} | {f.metric} | {f.baseline:.6g} | {f.current:.6g} | {f.change} | "
                  f"{f.allowed} | {' '.join(f'{v:.3g}' for v in f.per_pass)} |" for f in shown]
        if len(shown) < len(items):
            lines += ["", f"... and {len(items) - len(shown)} more unchanged metric(s), not listed (every regression "
                          "and improvement is)."]
    if result.failed_current:
        lines += ["", "## Cells that failed now", ""] + [f"- {x}" for x in result.failed_current]
    if result.order_failures:
        lines += ["", "## Order rules broken", ""] + [f"- {x}" for x in result.order_failures]
    if result.estimator_checked:
        lines += ["", f"## Memory estimator ({result.estimator_checked} cell(s) checked)", ""]
        lines += [f"- {x}" for x in result.estimator_failures] or ["- every prediction within its bound"]
    for title, ids in (("Cells only in the baseline", result.only_baseline),
                       ("Cells only in the current run", result.only_current)):
        if ids:
            lines += ["", f"## {title}", ""] + [f"- {rid}" for rid in ids]
    return "\n".join(lines) + "\n"


def check(baseline: Path, current: list[Path], rules_path: Path | None) -> tuple[GateResult, Path]:
    """The gate: CURRENT (one group per pass) against BASELINE (a group, or a baselines root where CURRENT's key is
    looked up) under the rules; runs of other hardware are refused. Returns the result and the baseline folder."""
    current_rows = load_passes(current, drop=UNREAD)
    baseline_dir = find_baseline(Path(baseline), current_rows)
    baseline_rows = load_rows(baseline_dir, drop=UNREAD)
    ran_on = [hardware_of(rows) for rows in (baseline_rows, current_rows)]
    if ran_on[0] != ran_on[1]:  # a group given directly is checked as a baselines root's key would be
        raise CompareError(f"{baseline_dir} ran {ran_on[0]} and {', '.join(map(str, current))} ran {ran_on[1]} "
                           "(model-GPUxcount): not comparable; compare runs of the same model on the same hardware")
    return compare_rows(baseline_rows, current_rows, load_rules(rules_path)), baseline_dir
