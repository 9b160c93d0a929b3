"""Issue 35: results as data (the DataFrame, CSV / Parquet / JSON lines), prices and cost, the cell's per-step log,
and trackers that never fail a run (a fake sink for the failure paths; the real MLflow server and TensorBoard files
are in test_tracking.py and the real cpu_smoke run in test_report.py)."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.prices import PricesError, finetune_hours, load_prices, usd_per_1k_images
from harness.report.cost import guide_costs, guide_report
from harness.report.documented import load_references
from harness.report.render import render
from harness.results import load_rows
from harness.results.export import ExportError, check_target, to_bytes
from harness.store import RowStore
from harness.track.base import Sink, read_steps, row_key, steps_of
from harness.track.live import LiveTracking
from training_core.trackers.steps import STEPS_FILE, StepLog

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "report_bytes"
GROUP = FIXTURE / "results" / "regress_cpu" / "tiny-cpux1"


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------- the report's bytes
def test_the_report_of_a_stored_group_is_byte_for_byte_what_it_was_before_pandas(tmp_path):
    """The statistics of repeats moved to pandas (harness/table.py repeat_table); the report of the same rows (a
    real regress_cpu baseline: 4 cells x 3 passes) is the file written before the move, byte for byte."""
    out = render(GROUP, tmp_path / "r.md", plots=False)
    assert out.read_text() == (FIXTURE / "regress_cpu.md").read_text()
    assert "| 0 | docvqa full sdpa fp32 | images_per_s | 3 | 28.03 ± 0.81 | 2.9% |  |" in out.read_text()


# ---------------------------------------------------------------- the DataFrame and its exports
def test_load_rows_gives_one_row_per_cell_with_flat_columns_and_units(tmp_path):
    stored = RowStore(GROUP).rows()
    frame = load_rows(GROUP)
    assert len(stored) == 12 and len(frame) == 12  # a gate's store: 4 cells x 3 passes, each pass a measurement
    assert frame[["cell", "pass"]].values.tolist() == [[c, p] for c in range(4) for p in (1, 2, 3)]
    for column in ("run_id", "status", "spec.strategy", "spec.precision", "env.torch", "images_per_s",
                   "peak_rss_bytes", "peak_memory_gib", "peak_memory_kind", "gpus"):
        assert column in frame.columns, column
    first = frame.iloc[0]
    row = next(r for r in stored if r["run_id"] == first["run_id"] and r.get("pass") == first["pass"])
    assert first["images_per_s"] == row["metrics"]["images_per_s"]
    assert math.isclose(first["peak_memory_gib"], row["metrics"]["peak_rss_bytes"] / 2**30)
    assert first["peak_memory_kind"] == "RSS" and first["spec.strategy"] == row["spec"]["strategy"]
    assert "usd_per_1k_images" not in frame.columns  # a CPU has no price
    # a rerun: an interrupted row, then the cell's ok row; the newest is the cell's, --all-runs keeps both
    store = RowStore(tmp_path / "regress_cpu" / "cpu")
    interrupted = {k: v for k, v in copy.deepcopy(stored[0]).items() if k != "pass"}
    interrupted.update({"status": "interrupted", "reason": "Ctrl-C", "finished_at": "2026-01-01T00:00:00+00:00"})
    store.append(interrupted)
    store.append({**{k: v for k, v in stored[0].items() if k != "pass"}, "finished_at": "2026-01-02T00:00:00+00:00"})
    assert load_rows(store.directory)["status"].tolist() == ["ok"]
    assert load_rows(store.directory, all_runs=True)["status"].tolist() == ["interrupted", "ok"]


def test_documented_and_cost_columns_join_where_a_reference_and_a_price_exist(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    row = copy.deepcopy(RowStore(GROUP).rows()[0])
    row["spec"].update({"gpu": "A100", "gpus_per_node": 8, "reference": "a100/full/1node/eager"})
    row["metrics"]["images_per_s"] = 5.0
    store.append(row)
    frame = load_rows(tmp_path)
    (got,) = frame.to_dict("records")
    assert got["documented.key"] == "a100/full/1node/eager" and got["documented.images_per_s"] == 5.041
    assert got["gpus"] == 8 and got["price.machine"] == "Standard_ND96amsr_A100_v4"
    assert math.isclose(got["usd_per_gpu_hour"], 32.77 / 8)
    assert math.isclose(got["usd_per_1k_images"], 8 * 32.77 / 8 / (5.0 * 3600) * 1000)
    assert math.isclose(got["finetune_hours"], 1000 / 5.0 / 3600)  # the recipe's DocVQA run: 1000 examples, 1 epoch
    assert math.isclose(got["finetune_usd"], got["finetune_hours"] * 32.77)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_an_export_reads_back_as_the_same_table(tmp_path, fmt):
    frame = load_rows(GROUP)
    out = tmp_path / f"rows.{ 'csv' if fmt == 'csv' else fmt}"
    out.write_bytes(to_bytes(frame, fmt))
    back = {"csv": pd.read_csv, "parquet": pd.read_parquet,
            "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt](out)
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    for column in ("run_id", "status", "spec.strategy"):
        assert back[column].astype(str).tolist() == frame[column].astype(str).tolist()
    for column in ("images_per_s", "peak_memory_gib", "peak_rss_bytes"):
        assert back[column].astype(float).tolist() == pytest.approx(frame[column].astype(float).tolist(), rel=1e-12)


def test_the_results_command_writes_csv_and_parquet_and_refuses_what_would_harm(tmp_path):
    out = _cli("results", GROUP, "--out", tmp_path / "rows.parquet")
    assert out.returncode == 0, out.stderr
    assert "12 rows x" in out.stderr and len(pd.read_parquet(tmp_path / "rows.parquet")) == 12
    assert len(pd.read_csv(io.StringIO(_cli("results", GROUP).stdout))) == 12  # CSV on stdout
    again = _cli("results", GROUP, "--out", tmp_path / "rows.parquet")
    assert again.returncode == 2 and "exists; add --replace" in again.stderr
    assert _cli("results", GROUP, "--out", tmp_path / "rows.parquet", "--replace").returncode == 0
    (tmp_path / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    for target, said in ((tmp_path / "link.csv", "symbolic link"), (tmp_path / "rows.jsonl", "store's own file"),
                         (tmp_path / "x.txt", "ends in .csv")):
        with pytest.raises(ExportError, match=said):
            check_target(target, "csv", replace=True)
    parquet_to_stdout = _cli("results", GROUP, "--format", "parquet")
    assert parquet_to_stdout.returncode == 2 and "give --out FILE.parquet" in parquet_to_stdout.stderr


# ---------------------------------------------------------------- prices and cost
def test_the_shipped_prices_have_sources_and_the_guide_costs_follow_from_them():
    prices = load_prices()
    assert {p.gpu for p in prices.prices} == {"A100", "A100-40GB", "H100", "V100"}  # H200: no source, left out
    assert all("skypilot-catalog" in p.source and p.date for p in prices.prices)
    assert prices.price("A100").machine == "Standard_ND96amsr_A100_v4"  # the guide's tables are A100-80GB
    assert prices.price("NVIDIA A100-SXM4-40GB").machine == "Standard_ND96amsr_A100_v4"  # by short name
    assert prices.price("A100-40GB").machine == "Standard_ND96asr_v4"  # the exact variant first
    assert prices.price("H200") is None and prices.price("cpu") is None
    refs = load_references()
    table = {row[1]: row for row in guide_costs(refs, prices)}
    # 8 A100 at $32.77/h, 5.041 images/s: 32.77 / (5.041 x 3.6) = $1.806 per 1,000 images
    assert table["`a100/full/1node/eager`"][8] == "$1.81"
    assert table["`v100/full/1node`"][8] == f"${22.032 / (2.462 * 3.6):,.2f}"
    assert usd_per_1k_images(None, 8, prices.price("A100")) is None and finetune_hours(0, prices.finetune("docvqa")) \
        is None
    text = guide_report(refs, prices)
    assert "## Sources" in text and "098741e70562f65d7af1cceb81e33b284f742604" in text


def test_a_prices_file_without_a_source_is_refused_naming_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("prices:\n  - {gpu: A100, machine: m, gpus: 8, usd_per_hour: 30, region: r, date: '2026-01-01'}\n")
    with pytest.raises(PricesError, match=r"p.yaml.*source"):
        load_prices(bad)
    bad.write_text("prices:\n" + "".join(
        f"  - {{gpu: A100, machine: m, gpus: 8, usd_per_hour: 30, region: r, source: a price page, date: '2026-01-0{i}'}}\n"
        for i in (1, 2)))
    with pytest.raises(PricesError, match="two prices"):
        load_prices(bad)


def test_the_cost_command_writes_the_guide_cost_report(tmp_path):
    out = _cli("cost", "--out", tmp_path / "cost.md")
    assert out.returncode == 0, out.stderr
    assert "| speed_a100 | `a100/full/1node/eager` |" in (tmp_path / "cost.md").read_text()


# ---------------------------------------------------------------- the per-step log
def test_the_step_log_streams_one_line_per_step_and_a_failed_write_never_raises(tmp_path, capsys):
    with StepLog(tmp_path, active=True, world_size=2) as log:
        log.write(1, 2.5, 0.5, 3, 300, 0.01, None, 1e-5)
        steps, offset = read_steps(tmp_path / STEPS_FILE)  # read while the log is open: each line is flushed
        assert [s["step"] for s in steps] == [1] and steps[0]["images_per_s"] == 3 * 2 / 0.5
        log.write(2, 2.4, 0.5, 3, 300, 0.01, 1024, 2e-5)
    more, _ = read_steps(tmp_path / STEPS_FILE, offset)
    assert [s["step"] for s in more] == [2] and more[0]["allocated_bytes"] == 1024
    with StepLog(tmp_path / "missing" / "dir", active=True) as log:  # cannot be opened: a warning, the cell goes on
        log.write(1, 1.0, 0.1, 1, 10, 0.0, None, None)
    assert "is not written any further" in capsys.readouterr().err
    with StepLog(tmp_path / "rank1", active=False) as log:
        log.write(1, 1.0, 0.1, 1, 10, 0.0, None, None)
    assert not (tmp_path / "rank1").exists()


def test_a_stored_row_without_a_step_log_sends_its_series():
    row = {"series": {"loss": [3.0, 2.0], "step_time_s": [0.5, 0.4], "data_wait_s": [0.0, 0.1]}}
    assert steps_of(row, None) == [{"step": 1, "loss": 3.0, "step_time_s": 0.5, "data_wait_s": 0.0},
                                   {"step": 2, "loss": 2.0, "step_time_s": 0.4, "data_wait_s": 0.1}]


# ---------------------------------------------------------------- a tracker never fails a run
class _Broken(Sink):
    name = "broken"

    def __init__(self):
        self.calls = 0

    def where(self):
        return "nowhere"

    def start_cell(self, *args):
        self.calls += 1
        raise ConnectionError("connection refused")


def test_a_tracker_that_fails_is_recorded_in_each_row_and_asked_once(tmp_path, monkeypatch):
    broken = _Broken()
    monkeypatch.setattr("harness.track.live.make_sink", lambda name, root: broken)
    warnings = []
    live = LiveTracking(("mlflow",), tmp_path, "g", "cpu", warn=warnings.append)
    rows = []
    for n in range(3):
        row = {"run_id": f"r{n}", "cell": n, "status": "ok", "spec": {}, "finished_at": f"t{n}"}
        live.begin(n, row["run_id"], {}, tmp_path)
        rows.append(live.end(row, tmp_path))
    live.close()
    assert broken.calls == 1 and len(warnings) == 1 and "harness track" in warnings[0]
    for row in rows:
        assert row["status"] == "ok"
        assert row["tracking"]["mlflow"] == {"status": "failed", "error": "ConnectionError: connection refused",
                                             "to": "nowhere"}
    assert row_key(rows[0]) == "r0@t0"
    json.dumps(rows)  # the row stays plain JSON


class _Recorder(Sink):
    name = "recorder"

    def __init__(self):
        self.logged: list[int] = []

    def where(self):
        return "here"

    def start_cell(self, *args):
        return "handle"

    def log_steps(self, handle, steps):
        self.logged += [s["step"] for s in steps]

    def finish_cell(self, handle, row, grid, group, cell_dir):
        return {"run": handle}


def test_a_cells_steps_reach_the_tracker_while_it_trains(tmp_path, monkeypatch):
    """The runner's thread sends each step as the cell writes it, not only when the cell ends."""
    recorder = _Recorder()
    monkeypatch.setattr("harness.track.live.make_sink", lambda name, root: recorder)
    monkeypatch.setattr("harness.track.live.POLL_S", 0.05)
    live = LiveTracking(("tensorboard",), tmp_path, "g", "cpu")
    live.begin(0, "r0", {}, tmp_path)
    with StepLog(tmp_path, active=True) as log:
        for step in (1, 2, 3):
            log.write(step, 1.0, 0.1, 1, 10, 0.0, None, None)
            deadline = time.monotonic() + 10
            while recorder.logged[-1:] != [step] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert recorder.logged == list(range(1, step + 1))  # sent while the cell is still running
    row = live.end({"run_id": "r0", "cell": 0, "status": "ok", "spec": {}, "finished_at": "t"}, tmp_path)
    live.close()
    assert recorder.logged == [1, 2, 3] and row["tracking"]["tensorboard"] == {"status": "sent", "to": "here",
                                                                              "run": "handle"}


def test_a_row_made_without_a_run_of_its_own_is_sent_whole_with_its_series(tmp_path, monkeypatch):
    """A row the runner makes without starting the cell (refused, or collected from an earlier SLURM job; no cell
    directory): sent the way `harness track` sends a stored row, its steps from the row's series."""
    recorder = _Recorder()
    monkeypatch.setattr("harness.track.live.make_sink", lambda name, root: recorder)
    live = LiveTracking(("mlflow",), tmp_path, "g", "cpu")
    row = {"run_id": "r9", "cell": 9, "status": "ok", "spec": {}, "finished_at": "t",
           "series": {"loss": [3.0, 2.5], "step_time_s": [0.2, 0.2]}}
    sent = live.end(row, None)
    live.close()
    assert recorder.logged == [1, 2] and sent["tracking"]["mlflow"] == {"status": "sent", "to": "here",
                                                                       "run": "handle"}


def test_a_tracker_that_is_not_installed_says_what_to_install(tmp_path, monkeypatch):
    from harness.track import TrackerError, make_sink

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(TrackerError, match=r"mlflow is not installed: make setup, or pip install -e '.\[track\]'"):
        make_sink("mlflow", tmp_path)
    live = LiveTracking(("mlflow",), tmp_path, "g", "cpu", warn=lambda text: None)
    row = live.end({"run_id": "r", "cell": 0, "status": "ok", "spec": {}, "finished_at": "t"}, None)
    assert row["tracking"]["mlflow"]["status"] == "failed" and "not installed" in row["tracking"]["mlflow"]["error"]


def test_a_report_of_gpu_rows_has_a_cost_section_with_its_sources(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    row = copy.deepcopy(RowStore(GROUP).rows()[0])
    row.pop("pass")
    row["spec"].update({"gpu": "A100", "gpus_per_node": 8, "reference": "a100/full/1node/eager", "task": "docvqa"})
    row["metrics"]["images_per_s"] = 10.0
    store.append(row)
    text = render(store.directory, tmp_path / "r.md", plots=False).read_text()
    section = text.split("## Cost\n", 1)[1].split("\n## ", 1)[0]
    # 8 x $4.096/h / (10 images/s x 3600) x 1000 = $0.910; the fine-tune: 1000 images at 10/s = 1.7 min, $0.91;
    # the documented row: 5.041 images/s on the same 8 GPUs = $1.81
    assert f"| {row['cell']} | full | sdpa | fp32 | 8x A100 | 10.00 | $4.096 | $0.910 | 1.7 min, $0.910 | $1.81 |" \
        in section, section
    assert "skypilot-catalog" in section and "1000 examples x 1 epoch(s)" in section
    assert "## Cost" not in render(GROUP, tmp_path / "cpu.md", plots=False).read_text()  # no price for a CPU


def test_the_mlflow_sink_is_quiet_and_quick_unless_told_otherwise(tmp_path, monkeypatch):
    """No usage telemetry from a benchmark's process and short HTTP retries, unless the user set MLflow's own
    variables; without MLFLOW_TRACKING_URI the store is an sqlite file in the results root."""
    import types

    from harness.track.mlflow import MlflowSink

    monkeypatch.setitem(sys.modules, "mlflow", types.SimpleNamespace(MlflowClient=lambda tracking_uri: tracking_uri))
    for key in ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    sink = MlflowSink(tmp_path)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"  # the user's own setting is kept
    assert sink.client == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:secret@mlflow.example:5000")
    assert MlflowSink(tmp_path).where() == "https://mlflow.example:5000"  # no credentials into a row or a log
