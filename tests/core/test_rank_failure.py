"""Issue 32 (5): one rank failing alone hung the cell (rank 0 waited in destroy_process_group / a collective; 30-60
minutes under NCCL), and its row said only the peers' symptom ("Connection closed by peer"). Now the failing rank
records its own error and exits at once, torchrun stops the others, and the row names the rank and its error."""

from __future__ import annotations

import json
import os
import time

import pytest

from training_core import rank_failures

from .cells import ROOT, run_cell

# rank 1 runs out of memory (the allocator's own error type, raised by a faked allocation) at its second step
FAULT = """import os
import torch
import training_core.engine as engine
_real = engine.PlainEngine.train_step
_calls = [0]
def train_step(self, micro_batches):
    _calls[0] += 1
    if os.environ.get("RANK") == "1" and _calls[0] == 2:
        raise torch.OutOfMemoryError("faked allocation of 80.00 GiB on rank 1")
    return _real(self, micro_batches)
engine.PlainEngine.train_step = train_step
"""


@pytest.mark.slow
def test_one_rank_failing_alone_ends_the_cell_in_seconds_naming_the_rank(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = run_cell(tmp_path / "cell", nproc=2, strategy="lora", precision="fp32", env=env, timeout=300,
                      warmup_steps=1, measured_steps=3)
    elapsed = time.monotonic() - started
    assert result["status"] == "oom", result["reason"]
    assert result["reason"].startswith("rank 1 failed first: OutOfMemoryError: faked allocation of 80.00 GiB"), \
        result["reason"]
    assert result["_returncode"] != 0
    assert elapsed < 150, elapsed  # seconds of start-up and one step, not a collective's timeout


def test_the_launcher_builds_the_row_from_the_first_failure_when_rank_0_wrote_none(tmp_path):
    """Under NCCL rank 0 may sit in a collective until torchrun stops it, never writing result.json: the row is the
    earliest failure record of this run (an older run's record, or a later symptom, is not the cause)."""
    now = time.time()
    rank_failures.record(tmp_path, 3, "error", "stale from an earlier run", at=now - 3600)
    rank_failures.record(tmp_path, 0, "error", "RuntimeError: Connection closed by peer", at=now + 2)
    rank_failures.record(tmp_path, 2, "oom", "OutOfMemoryError: CUDA out of memory", at=now + 1)
    (tmp_path / "failure.rank9.json").write_text("{not json")
    cause = rank_failures.first_cause(tmp_path, since=now - 60)
    assert cause["rank"] == 2 and rank_failures.described(cause) == \
        "rank 2 failed first: OutOfMemoryError: CUDA out of memory"

    import types

    from rich.console import Console

    from harness.grid.cells import Cell
    from harness.grid.schema import Limits
    from harness.run.launchers.base import Job, RowFinisher
    from harness.run.launchers.local import LocalLauncher
    from harness.run.options import LocalOptions
    from training_core.spec import RunSpec

    launcher = LocalLauncher(LocalOptions(), RowFinisher("g", None, {}), Console())
    cell = Cell(0, RunSpec(), {}, Limits())
    job = Job(cell, tmp_path, tmp_path / "spec.json", id="1", log=tmp_path / "log", started=now,
              data={"status": None, "proc": types.SimpleNamespace(returncode=1), "survivors": None})
    row = launcher.collect(job)
    assert row["status"] == "oom" and row["reason"].startswith("rank 2 failed first: OutOfMemoryError"), row["reason"]
    assert json.loads(json.dumps(row))["run_id"] == cell.spec.run_id
