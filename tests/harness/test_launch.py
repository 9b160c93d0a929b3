"""What the SLURM job script asks for, and how the runner reads SLURM's account of a job (fake sbatch/sacct/squeue
on PATH stand for a cluster here; tests/slurm runs the same paths on a real one)."""

import os
from pathlib import Path

import pytest

from harness.launch import sbatch_script, slurm_time
from harness.runner import SLURM_ENDED_BADLY, slurm_account
from training_core.spec import RunSpec


def script(**options) -> list[str]:
    spec = RunSpec(model="tiny", gpu=options.pop("gpu", "cpu"), cpu_threads=options.pop("cpu_threads", None),
                   gpus_per_node=2, global_batch=4)
    return sbatch_script(spec, Path("/c/spec.json"), Path("/c"), job_name="j", timeout_s=options.pop("timeout_s", 60),
                         workdir=Path("/w"), **options).splitlines()


@pytest.mark.parametrize(("seconds", "text"), [(0.5, "00:00:01"), (1, "00:00:01"), (59.2, "00:01:00"),
                                               (3600, "01:00:00"), (3600.1, "01:00:01"), (90061, "25:01:01")])
def test_time_limits_round_up_to_whole_seconds_and_never_to_zero(seconds, text):
    assert slurm_time(seconds) == text  # 00:00:00 would be no limit at all to SLURM
    assert f"#SBATCH --time={text}" in script(timeout_s=seconds)


def test_gpus_only_for_gpu_cells_and_the_nodes_to_the_cell_unless_shared():
    assert not any(line.startswith("#SBATCH --gpus") for line in script())
    assert "#SBATCH --gpus-per-node=2" in script(gpu="A100")
    assert "#SBATCH --exclusive" in script()
    shared = script(exclusive=False)
    assert "#SBATCH --exclusive" not in shared and "#SBATCH --cpus-per-task=2" in shared  # a CPU per rank
    assert "#SBATCH --cpus-per-task=10" in script(gpu="A100", exclusive=False)  # rank + 4 loader workers each


def test_memory_threads_and_the_rendezvous_port_reach_the_job():
    lines = script(memory_gb=1.5, cpu_threads=3)
    assert "#SBATCH --mem=1536M" in lines and "export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3" in lines
    assert "rdzv_port=$(( 20000 + SLURM_JOB_ID % 20000 ))" in lines  # a port per job by default
    assert "rdzv_port=12345" in script(port=12345)  # --master-port is honoured
    assert all(line.startswith("srun --ntasks-per-node=1 --cpus-per-task=$SLURM_CPUS_ON_NODE ")
               for line in lines if line.startswith("srun"))


def _fake(tmp_path, monkeypatch, name: str, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_sacct_that_cannot_answer_is_an_error_that_says_how_to_enable_accounting(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch, "sacct", 'echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1')
    account = slurm_account("7")
    assert account.state is None and "Slurm accounting storage is disabled" in account.error
    assert "AccountingStorageType=accounting_storage/slurmdbd" in account.error


def test_sacct_states_and_exit_codes_are_read_and_bad_ends_are_never_ok(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch, "sacct", 'echo "CANCELLED by 0|0:15"')
    assert slurm_account("7") == type(slurm_account("7"))(state="CANCELLED", exit_code="0:15")
    _fake(tmp_path, monkeypatch, "sacct", "true")  # not listed yet: a job sacct does not know is still pending
    assert slurm_account("7").state == "PENDING"
    assert {status for status, _ in SLURM_ENDED_BADLY.values()} <= {"error", "timeout", "oom", "interrupted"}
    assert SLURM_ENDED_BADLY["CANCELLED"][0] == "interrupted" and SLURM_ENDED_BADLY["FAILED"][0] == "error"


def test_a_job_slurm_ended_badly_is_never_an_ok_row_whatever_its_result_says(tmp_path, monkeypatch, capsys):
    import json

    from harness.cli import main
    from harness.store import RowStore

    _fake(tmp_path, monkeypatch, "sbatch", "echo 4242")
    _fake(tmp_path, monkeypatch, "squeue", "true")
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, global_batch: 2}\n")
    results = tmp_path / "r"
    assert main(["run", str(grid), "--results", str(results), "--launcher", "slurm"]) == 0
    (cell,) = (results / "g" / "cpu" / "cells").iterdir()
    spec = json.loads((cell / "spec.json").read_text())
    (cell / "result.json").write_text(json.dumps({"run_id": cell.name, "status": "ok", "reason": None, "spec": spec,
                                                  "metrics": {"images_per_s": 1.0}, "env": {}}))
    _fake(tmp_path, monkeypatch, "sacct", 'echo "FAILED|1:0"')  # e.g. a rank crashed after rank 0 wrote its result
    assert main(["run", str(grid), "--results", str(results), "--launcher", "slurm"]) == 1
    (row,) = RowStore(results / "g" / "cpu").rows()
    assert row["status"] == "error" and "SLURM job 4242 failed (FAILED, exit 1:0) although its result.json says ok" \
        in row["reason"]
    assert row["slurm"] == {"job": "4242", "state": "FAILED", "exit_code": "1:0", "exclusive": True}


def test_a_head_node_name_that_does_not_resolve_on_a_node_is_the_cells_error_naming_it(tmp_path):
    """The in-job check (python -m harness.hardware check) as every node runs it before torchrun."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    RunSpec(model="tiny").save(tmp_path / "spec.json")
    check = [sys.executable, "-m", "harness.hardware", "check", "--spec", str(tmp_path / "spec.json"),
             "--out", str(tmp_path)]
    ok = subprocess.run([*check, "--head-node=localhost"], cwd=root, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and not (tmp_path / "result.json").exists()
    bad = subprocess.run([*check, "--head-node=n9.nowhere.invalid"], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1
    row = json.loads((tmp_path / "result.json").read_text())
    assert row["status"] == "error" and "head node name 'n9.nowhere.invalid' does not resolve on compute node" \
        in row["reason"] and "fix the nodes' DNS or /etc/hosts" in row["reason"]
