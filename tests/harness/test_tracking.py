"""Issue 35: the trackers against the real thing. An MLflow tracking server started here on loopback (sqlite
backend, local artifact root), read back through MLflow's own client: a grid run with `--track mlflow` whose server
is stopped after its first cell (every cell still `ok`, the failure in the rows), then `harness track` with the
server back (every row complete exactly once; a second `track` adds nothing). TensorBoard's files are read back with
tensorboard's own reader in test_report.py's real cpu_smoke run (make test). This tier (`make test-tracking`, CI
runs it) stays out of `make test`: two server starts and three cells, ~1.5 minutes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.store import RowStore
from harness.track.base import final_metrics, params, row_key

ROOT = Path(__file__).resolve().parents[2]
MLFLOW = Path(sys.executable).with_name("mlflow")
GRID = """name: track3
description: three tiny LoRA cells for the tracker tests (one sent live, two after the server stopped)
hardware: {gpu: cpu, gpus_per_node: 1, nodes: 1}
defaults: {task: docvqa, data: synthetic, model: tiny, weights: random, num_crops: 4, global_batch: 1,
           per_device_batch: 1, lora_rank: 4, mode: throughput, warmup_steps: 1, measured_steps: 3,
           strategy: lora, precision: fp32, attention: sdpa}
limits: {timeout_s: 300}
axes:
  seed: [0, 1, 2]
"""

# MLflow's usage telemetry off in every process of the test (the server's too): tests never leave loopback
OFFLINE = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}

pytestmark = [pytest.mark.slow, pytest.mark.tracking,
              pytest.mark.skipif(not MLFLOW.exists(), reason="mlflow is not installed (make setup)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 with an sqlite store and a local artifact root, in its own process group."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, _free_port(), None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder, env=OFFLINE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("mlflow server did not start: " + (self.folder / "server.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "mlflow"
    folder.mkdir()
    running = Server(folder)
    running.start()
    yield running
    running.stop()


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_server_stopped_mid_grid_then_track_completes_it(tmp_path, server):
    grid = tmp_path / "track3.yaml"
    grid.write_text(GRID)
    results = tmp_path / "runs"
    env = {**OFFLINE, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_EXPERIMENT_NAME": "phi3v-tests"}
    runner = subprocess.Popen([sys.executable, "-m", "harness", "run", str(grid), "--results", str(results),
                               "--track", "mlflow"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    rows_file = results / "track3" / "cpu" / "rows.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (rows_file.exists() and rows_file.read_text().count("\n") >= 1):
        time.sleep(0.1)
    server.stop()  # after the first cell's row, while the second cell trains
    output, _ = runner.communicate(timeout=600)
    assert runner.returncode == 0, output[-3000:]
    rows = RowStore(results / "track3" / "cpu").rows()
    assert [r["status"] for r in rows] == ["ok"] * 3, output[-3000:]
    assert rows[0]["tracking"]["mlflow"]["status"] == "sent" and rows[0]["tracking"]["mlflow"]["to"] == server.uri
    for row in rows[1:]:
        assert row["tracking"]["mlflow"]["status"] == "failed" and row["tracking"]["mlflow"]["error"], row["tracking"]
    assert output.count("warning: tracker mlflow failed") == 1, output[-3000:]

    server.start()  # the same store, back
    sent = subprocess.run([sys.executable, "-m", "harness", "track", str(results / "track3"), "--to", "mlflow"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "2 row(s) sent, 1 already there" in sent.stdout, sent.stdout

    client = _client(server.uri)
    experiment = client.get_experiment_by_name("phi3v-tests").experiment_id
    runs = client.search_runs([experiment], max_results=100)
    cells = [r for r in runs if r.data.tags.get("phi3v_kind") == "cell"]
    (parent,) = [r for r in runs if r.data.tags.get("phi3v_kind") == "group"]
    assert sorted(r.data.tags["phi3v_row"] for r in cells) == sorted(row_key(r) for r in rows)  # each once, complete
    for row in rows:
        (run,) = [r for r in cells if r.data.tags["run_id"] == row["run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.params == params(row["spec"])
        assert {k: run.data.tags[k] for k in ("grid", "group", "status", "cell")} == \
            {"grid": "track3", "group": "cpu", "status": "ok", "cell": str(row["cell"])}
        assert run.data.metrics.keys() >= final_metrics(row).keys()
        for key, value in final_metrics(row).items():
            assert run.data.metrics[key] == pytest.approx(value, rel=1e-12), key
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == list(range(1, len(row["series"]["loss"]) + 1))
        assert [m.value for m in history] == pytest.approx(row["series"]["loss"], rel=1e-12)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "spec.json", "steps.jsonl", "log.txt"} <= names, names
        result = client.download_artifacts(run.info.run_id, "result.json", str(tmp_path / "dl" / row["run_id"]))
        assert json.loads(Path(result).read_text())["run_id"] == row["run_id"]

    again = subprocess.run([sys.executable, "-m", "harness", "track", str(results / "track3"), "--to", "mlflow"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 row(s) sent, 3 already there" in again.stdout, again.stdout + again.stderr
    assert len(client.search_runs([experiment], max_results=100)) == len(runs)  # a resend adds nothing
