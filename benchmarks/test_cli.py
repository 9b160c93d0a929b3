"""How long the CLI takes to answer, each command in a fresh interpreter as a user types it: `make bench-cli`.

- `--help`;
- `plan a100_speed` (the guide's A100 grid: 24 cells);
- `report` of the cpu_smoke rows (`make bench-cpu` writes them; plots included), into a temporary directory;
- `compare` of the committed CI baseline against itself (every cell and metric of its 3 passes is compared).

Targets on the 2-core development VM: `--help` <= 1 s, `plan` <= 2 s, `report` <= 3 s. They are printed beside the
measured means, not enforced: timings here vary 2x with the machine's load, so a benchmark reports and a test
(tests/test_cli_imports.py) holds the deterministic part (which modules each command loads).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ROWS = Path(os.environ.get("BENCH_CLI_ROWS", ROOT / "results" / "runs" / "cpu_smoke" / "cpu"))
BASELINES = ROOT / "results" / "baselines"
TARGETS_S = {"help": 1.0, "plan": 2.0, "report": 3.0}
ROUNDS = int(os.environ.get("BENCH_CLI_ROUNDS", "5"))


def harness(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"python -m harness {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"


def measure(benchmark, name: str, *args: str) -> None:
    benchmark.pedantic(harness, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    target = TARGETS_S.get(name)
    benchmark.extra_info["target_s"] = target
    print(f"\n{name}: mean {mean:.2f} s over {ROUNDS} runs" + (f" (target <= {target:g} s)" if target else ""))


def test_help(benchmark):
    measure(benchmark, "help", "--help")


def test_plan_a100_speed(benchmark):
    measure(benchmark, "plan", "plan", "a100_speed")


def test_report_cpu_smoke(benchmark, tmp_path):
    if not (SMOKE_ROWS / "rows.jsonl").exists():
        pytest.fail(f"no cpu_smoke rows in {SMOKE_ROWS}: run `make bench-cpu` first (make bench-cli does)")
    measure(benchmark, "report", "report", str(SMOKE_ROWS), "--out", str(tmp_path / "cpu_smoke.md"))


def test_compare_against_the_baseline(benchmark):
    group = BASELINES / "regress_cpu" / "tiny-cpux1"
    measure(benchmark, "compare", "compare", str(BASELINES), str(group), "--rules", str(BASELINES / "ci_rules.yaml"))
