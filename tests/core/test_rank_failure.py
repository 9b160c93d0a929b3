"""Issue 32 (5): one rank failing alone hung the cell (rank 0 waited in destroy_process_group / a collective; 30-60
minutes under NCCL), and its row said only the peers' symptom ("Connection closed by peer"). Now the failing rank
records its own error and exits at once, torchrun stops the others, and the row names the rank and its error."""

from __future__ import annotations

import json
import os
import time

import pytest

from training_core import rank_failures

from .cells import ROOT

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
    """Rank 1 runs out of memory alone. Rank 0 usually writes the row naming rank 1; when torchrun stops it first
    (a race: it is signalled as soon as rank 1 exits), the failure records are what the launchers build the row
    from. Either way the recorded cause is rank 1's own error, within seconds."""
    import subprocess
    import sys

    from training_core.spec import RunSpec

    from .cells import TINY

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cell"
    out.mkdir()
    RunSpec(**{**TINY, "gpus_per_node": 2, "global_batch": 4, "strategy": "lora", "precision": "fp32",
               "warmup_steps": 1, "measured_steps": 3}).save(out / "spec.json")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "training_core.run", "--spec", str(out / "spec.json"), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    if (out / "result.json").exists():  # rank 0's row
        row = json.loads((out / "result.json").read_text())
        status, reason = row["status"], row["reason"]
    else:  # rank 0 was stopped first: the row the launchers build
        cause = rank_failures.first_cause(out, since=time.time() - 600)
        assert cause is not None, proc.stderr[-3000:]
        status, reason = cause["status"], rank_failures.described(cause)
    assert status == "oom", reason
    assert reason.startswith("rank 1 failed first: OutOfMemoryError: faked allocation of 80.00 GiB"), reason
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
