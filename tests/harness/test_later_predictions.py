"""Predictions made after the run (`harness estimate --rows GROUP`), joined to rows by run_id (issue 32, item 4): a
short GPU lease runs cells with --no-estimate; any CPU predicts them afterwards; report and compare read them."""

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.later_predictions import predict_rows
from harness.store import PREDICTIONS, RowStore, StoreError

BASELINE = Path(__file__).resolve().parents[2] / "results" / "baselines" / "regress_cpu" / "tiny-cpux1"


def _group(tmp_path, n=1, **metrics) -> Path:
    """A results group holding the first `n` rows of the committed CPU baseline (real rows of the tiny preset), with
    `metrics` added to each (a measured allocated peak for the estimator's check)."""
    group = tmp_path / "g"
    group.mkdir()
    shutil.copy(BASELINE / "env.json", group / "env.json")
    rows = [json.loads(line) for line in (BASELINE / "rows.jsonl").read_text().splitlines()[:n]]
    store = RowStore(group)
    for row in rows:
        row.pop("pass", None)
        row["metrics"].update(metrics)
        store.append(row)
    return group


def test_rows_run_without_a_prediction_get_one_afterwards_and_report_and_compare_read_it(tmp_path, capsys):
    group = _group(tmp_path, 1, peak_mem_allocated_bytes=1)
    before, _ = RowStore(group).latest()
    assert "predicted" not in before[0]

    assert main(["estimate", "--rows", str(group), "--data-root", str(tmp_path / "twins")]) == 0
    assert "1 prediction(s) added" in capsys.readouterr().out
    lines = (group / PREDICTIONS).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["run_id"] == before[0]["run_id"]

    (row,), _ = RowStore(group).latest()
    predicted = row["predicted"]
    assert predicted["peak_bytes"] > 0 and predicted["made"]["when"] == "after the run"
    assert row["metrics"] == before[0]["metrics"]  # the row itself is untouched; rows.jsonl has one line still
    assert len((group / "rows.jsonl").read_text().splitlines()) == 1

    report = tmp_path / "report.md"
    assert main(["report", str(group), "--out", str(report)]) == 0
    assert "predicted after the run" in report.read_text()

    # compare's estimator gate uses it: the fixture's measured peak (1 byte) is far off the prediction, so it fails
    (tmp_path / "rules.yaml").write_text("estimator_error: 0.10\ndefault: {ignore: true}\n")
    assert main(["compare", str(group), str(group), "--rules", str(tmp_path / "rules.yaml")]) == 1
    assert "off the predicted" in capsys.readouterr().out

    # a second call has nothing left to predict; --force predicts again and the newest line wins
    assert main(["estimate", "--rows", str(group), "--data-root", str(tmp_path / "twins")]) == 0
    out = capsys.readouterr().out
    assert "0 prediction(s) added" in out and "has a prediction" in out
    assert len((group / PREDICTIONS).read_text().splitlines()) == 1
    assert main(["estimate", "--rows", str(group), "--force", "--data-root", str(tmp_path / "twins")]) == 0
    assert len((group / PREDICTIONS).read_text().splitlines()) == 2


def test_repeats_of_one_cell_are_predicted_once_and_a_rows_own_prediction_is_kept(tmp_path):
    group = _group(tmp_path, 2)
    store = RowStore(group)
    rows, _ = store.latest()
    store.append({**rows[0], "pass": 2})  # the same run_id in a second pass of a stored baseline: one prediction
    own = {**rows[1], "predicted": {"peak_bytes": 123, "phase": "step"}}
    store.append(own)

    out, left = predict_rows(group, tmp_path / "twins")
    assert [e["run_id"] for e in out] == [rows[0]["run_id"]]
    assert len((group / PREDICTIONS).read_text().splitlines()) == 1
    assert all("predicted" in r for r in RowStore(group).latest()[0] if r["run_id"] == rows[0]["run_id"])
    assert any("has a prediction" in why for why in left)
    latest = {r["run_id"]: r for r in RowStore(group).latest()[0]}
    assert latest[rows[1]["run_id"]]["predicted"] == {"peak_bytes": 123, "phase": "step"}


def test_a_row_whose_spec_does_not_give_its_run_id_is_said_not_predicted(tmp_path, capsys):
    group = _group(tmp_path, 1)
    text = (group / "rows.jsonl").read_text()
    row = json.loads(text)
    (group / "rows.jsonl").write_text(text.replace(row["run_id"], "0123456789abcdef"))
    assert main(["estimate", "--rows", str(group), "--data-root", str(tmp_path / "twins")]) == 1
    out = capsys.readouterr().out
    assert "not the row's" in out and "0 prediction(s) added" in out
    assert not (group / PREDICTIONS).exists()


@pytest.mark.parametrize("line, says", [
    ("{not json", "not a prediction"),
    ('{"run_id": "a9b743c000859947", "predicted": {"peak_bytes": -1}}', "positive number"),
    ('{"run_id": "../x", "predicted": {"peak_bytes": 10}}', "not a run id"),
    ('{"run_id": "a", "predicted": {"peak_bytes": 10}, "x": 1}', "expected an object"),
])
def test_a_damaged_predictions_file_is_refused_naming_its_line(tmp_path, line, says):
    group = _group(tmp_path, 1)
    (group / PREDICTIONS).write_text('{"run_id": "a", "predicted": {"peak_bytes": 10}}\n' + line + "\n")
    with pytest.raises(StoreError, match=rf"{PREDICTIONS}:2: .*{says}"):
        RowStore(group).latest()


def test_a_torn_last_prediction_is_ignored_and_a_directory_in_its_place_is_refused(tmp_path, capsys):
    group = _group(tmp_path, 1)
    (group / PREDICTIONS).write_text('{"run_id": "a", "predi')
    rows, _ = RowStore(group).latest()
    assert "predicted" not in rows[0] and "torn last line" in capsys.readouterr().err
    (group / PREDICTIONS).unlink()
    (group / PREDICTIONS).mkdir()
    assert main(["estimate", "--rows", str(group)]) == 2
    assert "not a file" in capsys.readouterr().err


def test_rows_and_a_grid_are_not_given_together(tmp_path, capsys):
    group = _group(tmp_path, 1)
    assert main(["estimate", "cpu_smoke", "--rows", str(group)]) == 2
    assert "does not go with --rows" in capsys.readouterr().err.replace("do(es)", "does")
    assert main(["estimate"]) == 2
    assert "or --rows GROUP" in capsys.readouterr().err


def test_a_prediction_appended_after_a_torn_line_starts_on_a_line_of_its_own(tmp_path, capsys):
    """An interrupted `estimate --rows` can leave a torn last line: the next prediction is appended as rows are (the
    torn tail moved aside first), not glued onto it into a line no reader accepts."""
    group = _group(tmp_path, 1)
    (group / PREDICTIONS).write_text('{"run_id": "a", "predicted": {"peak_bytes": 10}}\n{"run_id": "b", "pre')
    store = RowStore(group)
    store.add_prediction("c", {"peak_bytes": 20})
    assert store.predictions() == {"a": {"peak_bytes": 10}, "c": {"peak_bytes": 20}}
    (aside,) = group.glob(f"{PREDICTIONS}.torn-*")
    assert aside.read_text() == '{"run_id": "b", "pre' and "moved to" in capsys.readouterr().err
