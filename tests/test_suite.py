"""The test suite's own rules: the unit tier starts no cells, and the GPU tier says what it skips and why."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_unit_tier_recognises_what_starts_cells():
    from tests.conftest import starts_cells

    assert starts_cells(["python", "-m", "training_core.run", "--spec", "s.json"])
    assert starts_cells(["python", "-m", "torch.distributed.run", "--standalone", "-m", "training_core.run"])
    assert starts_cells(["/venv/bin/torchrun", "--nproc_per_node=2", "x.py"])
    assert starts_cells(["python", "-m", "harness", "run", "cpu_smoke"])
    assert not starts_cells(["python", "-m", "harness", "run", "cpu_smoke", "--dry-run"])
    assert not starts_cells(["python", "-m", "harness", "plan", "a100_speed"])
    assert not starts_cells(["git", "rev-parse", "HEAD"])


def test_a_unit_test_that_starts_a_cell_fails_and_says_to_mark_it_slow(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the suite's conftest, imported by the inner run
    pytester.makeconftest("from tests.conftest import _the_unit_tier_starts_no_cells  # noqa: F401")
    pytester.makepyfile(test_probe='''
import subprocess, sys

import pytest


def test_unmarked():
    subprocess.run([sys.executable, "-m", "training_core.run", "--help"], capture_output=True)


@pytest.mark.slow
def test_marked():
    subprocess.run([sys.executable, "-c", "pass", "training_core.run"], check=True)
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not gpu")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked starts*mark it @pytest.mark.slow*"])


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_the_gpu_tier_reports_flash_attention_as_a_skip_with_its_reason():
    """Without flash-attn the attention tests skip their flash case by name, instead of testing fewer backends."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu",
                          "-k", "flash_attention_2", "tests/gpu/test_gpu.py"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    skips = re.findall(r"SKIPPED \[1\] tests/gpu/test_gpu.py:\d+: (.*)", out.stdout)
    assert skips == ["flash-attn is not installed (make setup-gpu)"] * 2 and "2 skipped" in out.stdout


@pytest.mark.slow
def test_gpu_check_runs_the_valuable_stages_first_logs_live_packs_each_stage_and_predicts_afterwards(tmp_path):
    """scripts/gpu_check.sh end to end on this machine, with a CPU grid in place of gpu_smoke (issue 32, item 4):
    doctor, the LoRA cell, the full cell, the rest, the GPU tier (skipped here), the report; every line in live.log
    with its second; after each stage packed.tar.gz holds the rows; with no budget left every stage is skipped and
    said, and nothing recorded is lost; predictions are made afterwards (--after), joined to the rows."""
    import tarfile

    grid = tmp_path / "check.yaml"
    grid.write_text("name: check\nhardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, precision: fp32, attention: sdpa, lora_rank: 4, "
                    "global_batch: 2, warmup_steps: 1, measured_steps: 1, num_crops: 4}\n"
                    "axes: {strategy: [qlora, full, lora]}\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GRID": str(grid)}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    group = out / "runs" / "check" / "cpu"
    rows = [json.loads(line) for line in (group / "rows.jsonl").read_text().splitlines()]
    assert [r["spec"]["strategy"] for r in rows] == ["lora", "full", "qlora"]
    assert all(r["status"] == "ok" and "predicted" not in r for r in rows)  # no prediction on the lease
    stages = (out / "stages.txt").read_text().splitlines()
    assert [line.split()[:2] for line in stages] == [[s, "ran"] for s in ("doctor", "lora", "full", "cells",
                                                                          "gpu-tests", "report")]
    live = (out / "live.log").read_text().splitlines()
    assert all(re.match(r"^\[\+ *\d+s\] ", line) for line in live)
    assert [line.split("== ")[1].split()[0] for line in live if "] == " in line] == \
        ["doctor", "lora", "full", "cells", "gpu-tests", "report"]
    assert json.loads((out / "doctor.json").read_text())["checks"] and "skipped" in (out / "test-gpu.txt").read_text()
    assert "| lora |" in (out / "report" / "cpu.md").read_text()
    with tarfile.open(out / "packed.tar.gz") as packed:
        names = packed.getnames()
        assert packed.extractfile("./runs/check/cpu/rows.jsonl").read() == (group / "rows.jsonl").read_bytes()
    assert "./live.log" in names and not any("/data/" in n for n in names)

    # no budget left: every stage is skipped and said; the rows and the pack stay
    again = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT, env={**env, "BUDGET_S": "0"},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert [line.split()[:2] for line in (out / "stages.txt").read_text().splitlines()] == \
        [[s, "skipped"] for s in ("doctor", "lora", "full", "cells", "gpu-tests", "report")]
    assert "lora: skipped:" in again.stdout and len((group / "rows.jsonl").read_text().splitlines()) == 3
    with tarfile.open(out / "packed.tar.gz") as packed:
        assert len(packed.extractfile("./runs/check/cpu/rows.jsonl").read().splitlines()) == 3

    # afterwards, on any CPU: each row predicted once and joined by run_id; a CPU group has nothing to gate
    after = subprocess.run(["bash", "scripts/gpu_check.sh", "--after", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert after.returncode == 0, after.stdout[-4000:] + after.stderr[-2000:]
    predicted = [json.loads(line) for line in (group / "predicted.jsonl").read_text().splitlines()]
    assert sorted(p["run_id"] for p in predicted) == sorted(r["run_id"] for r in rows)
    text = (out / "estimate.txt").read_text()
    assert "3 prediction(s) added" in text and "no row has a measured allocated peak" in text
    assert "predicted after the run" in (out / "report" / "cpu.md").read_text()
