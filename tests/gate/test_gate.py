"""The regression gate's own proof (make test-gate; CI runs it after `make regress`): real timed runs of the
gate's cells against the committed baseline (results/baselines), on this machine.

- Unchanged code under a CPU burner passes. The burner is the harshest load measured on the 2-core CI machine:
  two busy processes, switched on and off at random every 1-5 s, so cells and passes are hit unevenly.
- A deliberate 2x slowdown of one strategy (tests/gate/slowdown: every lora step costs twice its CPU time, losses
  unchanged) fails, naming that cell, under the same burner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml

from harness.gate.baseline import find_baseline, load_passes, load_rows
from harness.gate.compare import compare_rows
from harness.gate.rules import load_rules

pytestmark = pytest.mark.gate

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ROOT / "results" / "baselines"
RULES = BASELINES / "ci_rules.yaml"
PASSES = 3

BURNER = """
import random, subprocess, sys, time
rng = random.Random(0)
while True:
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    time.sleep(rng.uniform(1, 5))
    for proc in busy:
        proc.kill()
        proc.wait()
    time.sleep(rng.uniform(1, 5))
"""


@contextmanager
def cpu_burner(load: dict):
    """Runs the burner; `load["busy_share"]` is then the share of the machine's CPU time that was busy."""
    before = psutil.cpu_times()
    burner = subprocess.Popen([sys.executable, "-c", BURNER], start_new_session=True)
    try:
        yield load
    finally:
        os.killpg(burner.pid, signal.SIGKILL)
        burner.wait()
        after = psutil.cpu_times()
        idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
        total = sum(after) - sum(before)
        load["busy_share"] = 1 - idle / total


def run_passes(tmp_path: Path, grid: Path, env: dict | None = None) -> list[Path]:
    groups = []
    for number in range(1, PASSES + 1):
        cmd = [sys.executable, "-m", "harness", "run", str(grid), "--results", str(tmp_path), "--group",
               f"pass{number}"]
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        groups.append(tmp_path / "regress_cpu" / f"pass{number}")
    return groups


def gate(groups: list[Path], load: dict):
    current = load_passes(groups)
    result = compare_rows(load_rows(find_baseline(BASELINES, current)), current, load_rules(RULES))
    print(f"\nbusy share of the machine's CPU time while the cells ran: {load['busy_share']:.0%}")
    for f in result.findings:
        if f.metric.startswith("normalized_"):
            print(f"{f.label.split()[1]:14} {f.metric:28} baseline {f.baseline:.3f} now {f.current:.3f} "
                  f"({f.change}, allowed {f.allowed}) per pass {' '.join(f'{v:.3f}' for v in f.per_pass)}: "
                  f"{f.verdict}")
    return result


def test_unchanged_code_passes_under_a_cpu_burner(tmp_path):
    load = {}
    with cpu_burner(load):
        groups = run_passes(tmp_path, ROOT / "matrices" / "regress_cpu.yaml")
    result = gate(groups, load)
    assert load["busy_share"] > 0.6, "the burner did not load the machine: this run proves nothing"  # idle + a cell: ~0.5
    judged = {(f.label.split()[1], f.metric) for f in result.findings}
    for strategy in ("frozen_vision", "lora", "qlora"):
        assert (strategy, "normalized_images_per_cpu_s") in judged and (strategy, "normalized_images_per_s") in judged
    assert not result.failed, [(f.label, f.metric, f.change, f.per_pass) for f in result.regressions]


def test_a_2x_slowdown_of_one_strategy_fails(tmp_path):
    grid = yaml.safe_load((ROOT / "matrices" / "regress_cpu.yaml").read_text())
    grid["axes"]["strategy"] = ["full", "lora"]  # the same cells (same run_ids), fewer of them
    (tmp_path / "regress_cpu.yaml").write_text(yaml.safe_dump(grid))
    env = {"GATE_SLOWDOWN": "lora", "PYTHONPATH": str(Path(__file__).parent / "slowdown")}
    load = {}
    with cpu_burner(load):
        groups = run_passes(tmp_path / "results", tmp_path / "regress_cpu.yaml", env)
    assert load["busy_share"] > 0.6
    logs = "".join(p.read_text() for p in (groups[0] / "cells").glob("*/log.txt"))
    assert logs.count("gate test: lora slowed 2.0x") == 1  # the lora cell only, and it was slowed
    result = gate(groups, load)
    assert result.failed
    regressed = {(f.label.split()[1], f.metric) for f in result.regressions}
    assert ("lora", "normalized_images_per_cpu_s") in regressed
    assert all(strategy == "lora" and metric.startswith("normalized_") for strategy, metric in regressed), regressed
    finding = next(f for f in result.regressions if f.metric == "normalized_images_per_cpu_s")
    assert finding.current / finding.baseline < 0.75, (finding.change, finding.per_pass)
    losses = [f for f in result.findings if f.metric.startswith("loss")]
    assert losses and all(f.verdict == "unchanged" for f in losses)  # the slowdown changed the speed only
