import copy
import json

import pytest

from harness.cli import main
from harness.gate.baseline import baseline_key
from harness.store import RowStore

BASE_METRICS = {"images_per_s": 10.0, "tokens_per_s": 1000.0, "accuracy": 0.80, "peak_mem_reserved_bytes": 1000,
                "step_time_s_p50": 1.0, "loss_last": 2.0, "trainable_params": 100, "model_state_bytes": 5000,
                "measured_steps": 3}


def _row(run_id, strategy, cell, **metrics):
    return {"run_id": run_id, "matrix": "g", "cell": cell, "status": "ok", "reason": None,
            "spec": {"task": "docvqa", "strategy": strategy, "precision": "fp32", "attention": "sdpa", "nodes": 1,
                     "gpus_per_node": 1, "model": "tiny"},
            "metrics": {**BASE_METRICS, **metrics}, "env": {"gpus": [], "world_size": 1}}


def _store(path, rows):
    store = RowStore(path)
    for row in rows:
        store.append(row)
    return str(path)


def _run(tmp_path, baseline, current, rules=None):
    args = ["compare", _store(tmp_path / "base", baseline), _store(tmp_path / "cur", current)]
    if rules:
        (tmp_path / "rules.yaml").write_text(rules)
        args += ["--rules", str(tmp_path / "rules.yaml")]
    return main(args)


BASELINE = [_row("a", "full", 0), _row("b", "lora", 1, model_state_bytes=1000)]


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ("images_per_s", 9.0),  # higher is better: -10% > 5%
        ("tokens_per_s", 900.0),
        ("accuracy", 0.70),
        ("peak_mem_reserved_bytes", 1100),  # lower is better: +10%
        ("step_time_s_p50", 1.2),
        ("loss_last", 2.5),
        ("trainable_params", 101),  # exact
        ("measured_steps", 2),
    ],
)
def test_a_regression_of_each_kind_fails(tmp_path, capsys, metric, value):
    current = copy.deepcopy(BASELINE)
    current[0]["metrics"][metric] = value
    assert _run(tmp_path, BASELINE, current) == 1
    out = capsys.readouterr().out
    assert "**FAILED**: 1 regression(s)" in out and f"| a | docvqa full fp32 sdpa 1 1 | {metric} |" in out


@pytest.mark.parametrize(("metric", "value"), [("images_per_s", 12.0), ("peak_mem_reserved_bytes", 800),
                                               ("loss_last", 1.5), ("accuracy", 0.9)])
def test_improvements_pass(tmp_path, capsys, metric, value):
    current = copy.deepcopy(BASELINE)
    current[0]["metrics"][metric] = value
    assert _run(tmp_path, BASELINE, current) == 0
    assert "1 improvement(s)" in capsys.readouterr().out


def test_changes_inside_the_tolerance_pass_and_rules_set_tolerances(tmp_path, capsys):
    current = copy.deepcopy(BASELINE)
    current[0]["metrics"]["images_per_s"] = 9.6  # -4% within the default 5%
    current[0]["metrics"]["loss_last"] = 2.0005
    assert _run(tmp_path, BASELINE, current, "metrics:\n  loss_last: {absolute: 0.001}\n") == 0
    assert "**passed**: 0 regression(s)" in capsys.readouterr().out
    current[0]["metrics"]["loss_last"] = 2.01
    assert _run(tmp_path, BASELINE, current, "metrics:\n  loss_last: {absolute: 0.001}\n") == 1


def test_cells_are_matched_by_spec_not_order_and_one_sided_cells_are_reported(tmp_path, capsys):
    current = [copy.deepcopy(BASELINE[1]), _row("c", "qlora", 2)]  # reordered; "a" missing, "c" new
    assert _run(tmp_path, BASELINE, current) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) only in the baseline, 1 only now" in out
    assert "## Cells only in the baseline\n\n- a" in out and "## Cells only in the current run\n\n- c" in out


def test_repeats_are_compared_by_their_median(tmp_path):
    baseline = [_row("a", "full", 0, images_per_s=v) for v in (10.0, 100.0, 10.2)]
    current = [_row("a", "full", 0, images_per_s=v) for v in (1.0, 10.1, 10.1)]
    assert _run(tmp_path, baseline, current) == 0  # medians 10.2 and 10.1


def test_normalised_throughput_cancels_a_slower_machine(tmp_path, capsys):
    slow = copy.deepcopy(BASELINE)
    for row in slow:
        row["metrics"]["images_per_s"] /= 2  # the whole machine is twice slower
    rules = "default: {ignore: true}\nmetrics:\n  normalized_images_per_s: {relative: 0.1}\nbaseline_cell: {strategy: full}\n"
    assert _run(tmp_path, BASELINE, slow, rules) == 0
    lopsided = copy.deepcopy(BASELINE)
    lopsided[1]["metrics"]["images_per_s"] = 5.0  # only the lora cell got slower
    assert _run(tmp_path / "2", BASELINE, lopsided, rules) == 1
    assert "normalized_images_per_s" in capsys.readouterr().out


PASS_RULES = ("default: {ignore: true}\nmetrics:\n  normalized_images_per_cpu_s: {relative: 0.25}\n"
              "baseline_cell: {strategy: full}\n")


def _passes(tmp_path, name, speeds):
    """One results group per pass; `speeds` gives (full, lora) images per CPU second in each pass."""
    groups = []
    for number, (full, lora) in enumerate(speeds, start=1):
        rows = [_row("a", "full", 0, images_per_cpu_s=full), _row("b", "lora", 1, images_per_cpu_s=lora)]
        groups.append(_store(tmp_path / name / f"pass{number}", rows))
    return groups


def _gate(tmp_path, current):
    (tmp_path / "rules.yaml").write_text(PASS_RULES)
    base = _passes(tmp_path, "base", [(10.0, 8.0), (10.0, 8.0), (10.0, 8.0)])
    assert main(["baseline", *base, "--root", str(tmp_path / "bl")]) == 0
    return main(["compare", str(tmp_path / "bl"), *current, "--rules", str(tmp_path / "rules.yaml")])


def test_passes_are_normalised_within_each_pass_then_medianed(tmp_path, capsys):
    # the machine ran 3x slower during the whole second pass: each pass's ratio is the same, nothing moves
    assert _gate(tmp_path, _passes(tmp_path, "slow", [(10.0, 8.0), (3.3, 2.64), (10.0, 8.0)])) == 0
    out = capsys.readouterr().out
    assert "Passes: 3 in the baseline, 3 now" in out
    assert "| b | docvqa lora fp32 sdpa 1 1 | normalized_images_per_cpu_s | 0.8 | 0.8 | +0.00% | ±25% | 0.8 0.8 0.8 |" in out
    # a burst of load hit the lora cell of one pass only (its ratio 0.3): the median over passes drops it
    assert _gate(tmp_path / "2", _passes(tmp_path / "2", "burst", [(10.0, 8.1), (10.0, 3.0), (10.0, 7.9)])) == 0


def test_a_2x_slowdown_in_every_pass_fails_and_names_the_cell(tmp_path, capsys):
    assert _gate(tmp_path, _passes(tmp_path, "slowed", [(10.0, 4.0), (6.0, 2.5), (10.0, 3.9)])) == 1
    out = capsys.readouterr().out
    assert "**FAILED**: 1 regression(s)" in out
    assert "| b | docvqa lora fp32 sdpa 1 1 | normalized_images_per_cpu_s | 0.8 | 0.4 | -50.00% | ±25% | 0.4 0.417 0.39 |" in out
    # two of three passes slowed is enough; one is not (above)
    assert _gate(tmp_path / "2", _passes(tmp_path / "2", "two", [(10.0, 4.0), (10.0, 8.0), (10.0, 3.9)])) == 1


def test_a_stored_multi_pass_baseline_keeps_its_passes(tmp_path, capsys):
    base = _passes(tmp_path, "base", [(10.0, 8.0), (5.0, 2.0), (10.0, 8.0)])
    assert main(["baseline", *base, "--root", str(tmp_path / "bl")]) == 0
    assert "6 rows (3 passes)" in capsys.readouterr().out
    rows = RowStore(tmp_path / "bl" / "g" / "tiny-cpux1").rows()
    assert sorted(r["pass"] for r in rows) == [1, 1, 2, 2, 3, 3]
    # its normalised value is the median of its per-pass ratios (0.8, 0.4, 0.8), not the ratio of pooled medians
    (tmp_path / "rules.yaml").write_text(PASS_RULES)
    one = _store(tmp_path / "one", [_row("a", "full", 0, images_per_cpu_s=10.0),
                                    _row("b", "lora", 1, images_per_cpu_s=8.0)])
    assert main(["compare", str(tmp_path / "bl"), one, "--rules", str(tmp_path / "rules.yaml")]) == 0
    assert "| normalized_images_per_cpu_s | 0.8 | 0.8 |" in capsys.readouterr().out
    other = _store(tmp_path / "other", [{**BASELINE[0], "matrix": "h"}])
    assert main(["baseline", base[0], other, "--root", str(tmp_path / "bl2")]) == 2
    assert "different grids, models or hardware (g/tiny-cpux1, h/tiny-cpux1)" in capsys.readouterr().err


def test_order_rules_and_failed_cells(tmp_path, capsys):
    rules = "orders:\n  - {metric: model_state_bytes, by: strategy, order: [full, lora]}\n"
    current = copy.deepcopy(BASELINE)
    current[1]["metrics"]["model_state_bytes"] = 9000  # lora now above full
    assert _run(tmp_path, BASELINE, current, rules) == 1
    assert "model_state_bytes: expected full > lora" in capsys.readouterr().out
    broken = copy.deepcopy(BASELINE)
    broken[1].update(status="oom", metrics={})
    assert _run(tmp_path / "2", BASELINE, broken) == 1
    assert "ok in the baseline, oom now" in capsys.readouterr().out


def test_no_matching_baseline_says_so(tmp_path, capsys):
    current = _store(tmp_path / "cur", BASELINE)
    (tmp_path / "baselines" / "other" / "tiny-A100x8").mkdir(parents=True)
    (tmp_path / "baselines" / "other" / "tiny-A100x8" / "rows.jsonl").write_text(json.dumps(BASELINE[0]) + "\n")
    assert main(["compare", str(tmp_path / "baselines"), current]) == 2
    err = capsys.readouterr().err
    assert "no baseline for g/tiny-cpux1" in err and "have: other/tiny-A100x8" in err and "make regress-baseline" in err
    assert baseline_key(BASELINE) == "g/tiny-cpux1"


def test_the_baseline_command_stores_by_key(tmp_path, capsys):
    group = _store(tmp_path / "run", BASELINE)
    assert main(["baseline", group, "--root", str(tmp_path / "bl")]) == 0
    assert (tmp_path / "bl" / "g" / "tiny-cpux1" / "rows.jsonl").exists()
    assert main(["compare", str(tmp_path / "bl"), group]) == 0


def test_a_gate_that_compares_nothing_is_an_error_not_a_pass(tmp_path, capsys):
    # no cell in common (e.g. every run_id changed): nothing compared
    assert _run(tmp_path / "1", BASELINE, [_row("x", "full", 0), _row("y", "lora", 1)]) == 2
    assert "no cell in common: the baseline has 2 cell(s), the current run 2" in capsys.readouterr().err
    # cells in common, but the rules check none of their metrics
    assert _run(tmp_path / "2", BASELINE, BASELINE, "default: {ignore: true}\nmetrics: {mfu: {}}\n") == 2
    assert "no metric was compared" in capsys.readouterr().err
    # normalised throughput asked for, but its reference cell is not in the runs
    assert _run(tmp_path / "3", BASELINE, BASELINE, "baseline_cell: {strategy: qlora}\n") == 2
    assert "rules.baseline_cell {'strategy': 'qlora'} matches no cell" in capsys.readouterr().err


def test_the_gate_checks_the_memory_estimators_error_when_asked(tmp_path, capsys):
    def predicted(row, allocated, peak):
        return {**row, "metrics": {**row["metrics"], "peak_mem_allocated_bytes": allocated},
                "predicted": {"peak_bytes": peak, "phase": "backward"}}
    current = [predicted(BASELINE[0], 110 * 2**20, 100 * 2**20), predicted(BASELINE[1], 105 * 2**20, 100 * 2**20)]
    assert _run(tmp_path, BASELINE, current, "estimator_error: 0.15\n") == 0
    assert "Memory estimator (2 cell(s) checked)" in capsys.readouterr().out
    assert _run(tmp_path, BASELINE, current, "estimator_error: 0.08\n") == 1
    out = capsys.readouterr().out
    assert "measured allocated peak 0.11 GiB is +10.0% off the predicted 0.10 GiB (allowed ±8%)" in out
    assert _run(tmp_path / "plain", BASELINE, BASELINE, "estimator_error: 0.08\n") == 2  # nothing to check: said
    assert "no ok row has both a prediction and a measured allocated peak" in capsys.readouterr().err


def test_the_estimator_check_alone_is_a_comparison(tmp_path, capsys):
    """gpu_check.sh gates a group against itself with only the estimator's bound."""
    row = {**BASELINE[0], "metrics": {**BASELINE[0]["metrics"], "peak_mem_allocated_bytes": 2**30},
           "predicted": {"peak_bytes": 2**30, "phase": "backward"}}
    assert _run(tmp_path, [row], [row], "estimator_error: 0.10\ndefault: {ignore: true}\n") == 0
    assert "every prediction within its bound" in capsys.readouterr().out


def test_baseline_never_replaces_a_stored_one_silently_and_stays_inside_its_root(tmp_path, capsys):
    """Issue 24 (5, 6): a stored baseline is replaced only with --replace (a 10x slower run does not quietly become
    the baseline); a row's `matrix` that is a path writes nothing outside --root; a --root that is a file is said."""
    good = _store(tmp_path / "good", BASELINE)
    assert main(["baseline", good, "--root", str(tmp_path / "bl")]) == 0
    stored = (tmp_path / "bl" / "g" / "tiny-cpux1" / "rows.jsonl").read_text()
    slow = _store(tmp_path / "slow", [{**r, "metrics": {**r["metrics"], "images_per_s": 1.0}} for r in BASELINE])
    assert main(["baseline", slow, "--root", str(tmp_path / "bl")]) == 2
    assert "a baseline is already stored for g/tiny-cpux1; pass --replace" in capsys.readouterr().err
    assert (tmp_path / "bl" / "g" / "tiny-cpux1" / "rows.jsonl").read_text() == stored
    assert main(["baseline", slow, "--root", str(tmp_path / "bl"), "--replace"]) == 0
    assert (tmp_path / "bl" / "g" / "tiny-cpux1" / "rows.jsonl").read_text() != stored
    escape = _store(tmp_path / "escape", [{**r, "matrix": "../../../../escaped"} for r in BASELINE])
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["baseline", escape, "--root", str(tmp_path / "deep" / "bl")]) == 2
    assert "not a folder name" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == before and not (tmp_path.parent / "escaped").exists()
    (tmp_path / "file").write_text("")
    assert main(["baseline", good, "--root", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_rules_that_would_check_nothing_are_errors(tmp_path, capsys):
    """Issue 24 (16): an infinite tolerance, a typo under metrics, an ordering on an unknown metric or `by` key, or
    with values no cell has: each an error naming the rule, not a gate that passes a 10x slowdown; a text
    images_per_s is a bad row, not a dropped metric."""
    slow = [{**r, "metrics": {**r["metrics"], "images_per_s": 1.0}} for r in BASELINE]
    for i, (rules, said) in enumerate((
            ("default: {relative: .inf}\n", "invalid rules"),
            ("metrics: {images_per_s: {relative: .nan}}\n", "invalid rules"),
            ("metrics: {imagse_per_s: {relative: 0.1}}\n", "rules.metrics.imagse_per_s: 'imagse_per_s' is not"),
            ("orders:\n  - {metric: model_state, by: strategy, order: [full, lora]}\n", "rules.orders[0].metric"),
            ("orders:\n  - {metric: model_state_bytes, by: stratgy, order: [full, lora]}\n",
             "rules.orders[0].by: no cell's spec has 'stratgy'"),
            ("orders:\n  - {metric: model_state_bytes, by: strategy, order: [fulll, lorra]}\n",
             "match no cell's strategy"))):
        assert _run(tmp_path / str(i), BASELINE, slow, rules) == 2, rules
        assert said in capsys.readouterr().err, rules
    text = [{**r, "metrics": {**r["metrics"], "images_per_s": "10"}} for r in BASELINE]
    assert _run(tmp_path / "text", BASELINE, text) == 2
    assert "metrics.images_per_s is '10', not a number" in capsys.readouterr().err


def test_compare_checks_the_hardware_of_a_group_given_directly(tmp_path, capsys):
    """Issue 24 (17): an H100 baseline group against a CPU group is not comparable (it was checked only under a
    baselines root)."""
    h100 = [{**r, "env": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}] * 8, "world_size": 8}} for r in BASELINE]
    assert _run(tmp_path, h100, BASELINE) == 2
    assert "ran tiny-H100x8 and" in capsys.readouterr().err


def test_a_rerun_after_an_interrupted_row_and_duplicates_follow_one_rule(tmp_path, capsys):
    """Issue 24 (17, 18): `baseline` takes a group whose interrupted row was followed by a final ok row (Ctrl-C,
    then a rerun); duplicate final rows are not repeats in compare: the newest is used, as in the report, and they
    are named."""
    interrupted = {**BASELINE[0], "status": "interrupted", "metrics": {}}
    group = _store(tmp_path / "run", [interrupted, *BASELINE])
    assert main(["baseline", group, "--root", str(tmp_path / "bl")]) == 0
    stored = RowStore(tmp_path / "bl" / "g" / "tiny-cpux1").rows()
    assert [r["status"] for r in stored] == ["ok", "ok"]
    doubled = [{**BASELINE[0], "metrics": {**BASELINE[0]["metrics"], "images_per_s": 100.0}}, *BASELINE]
    assert _run(tmp_path / "dup", BASELINE, doubled) == 0  # the newest row (10 images/s, as the baseline) is used
    assert "1 cell(s) have more than one final row (a)" in capsys.readouterr().err
