"""The SLURM launcher against a real cluster (tests/slurm/cluster.sh: slurm-wlm 22.05, munge, slurmdbd + MariaDB,
two compute nodes n1 and n2 on this machine). `make test-slurm` starts the cluster, runs these (pytest -m slurm)
and stops it; without a cluster they are skipped, saying how to start one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import RowStore

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
CONF = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/phi3v-slurm")) / "slurm.conf"
CELL = ("model: tiny, task: docvqa, strategy: lora, precision: fp32, lora_rank: 4, warmup_steps: 1, "
        "measured_steps: 2, num_crops: 4")


@pytest.fixture(scope="module")
def env():
    conf = os.environ.get("SLURM_CONF") or str(CONF)
    environment = {**os.environ, "SLURM_CONF": conf, "PYTHONPATH": str(ROOT)}
    try:
        up = subprocess.run(["sinfo", "-h", "-o", "%T"], env=environment, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        up = None
    if up is None or up.returncode or not up.stdout.strip():
        pytest.skip("no SLURM cluster answers: make test-slurm starts one (tests/slurm/cluster.sh start)")
    return environment


def grid(tmp_path: Path, body: str, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nhardware: {{gpu: cpu, gpus_per_node: 1}}\ndefaults: {{{CELL}}}\n"
                    f"limits: {{timeout_s: 600}}\n{body}")
    return path


def harness(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def jobs(results: Path) -> list[str]:
    return [p.read_text().strip() for p in sorted(results.rglob("slurm_job_id"))]


def wait_until_ended(env, job_ids: list[str], timeout: float = 300) -> None:
    """Until sacct lists every job in an end state (records appear a second or two after a job ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], env=env,
                             capture_output=True, text=True, timeout=60)
        states = dict(line.split("|")[:2] for line in out.stdout.split() if "|" in line)
        if len(states) == len(job_ids) and all(s.split()[0] not in ("PENDING", "RUNNING", "COMPLETING")
                                               for s in states.values()):
            return
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} did not end in {timeout:g} s")


def test_one_and_two_node_cells_run_on_a_cluster_without_gpus_and_a_second_run_collects_them(env, tmp_path):
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2}\n  - {nodes: 2, global_batch: 4}\n", "two")
    results = tmp_path / "r"
    first = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")  # no --sbatch-arg
    assert first.returncode == 0, first.stdout + first.stderr
    submitted = jobs(results)
    assert len(submitted) == 2 and first.stdout.count("submitted ") == 2
    for script in results.rglob("job.sbatch"):
        text = script.read_text()
        assert "#SBATCH --gpus" not in text and "#SBATCH --exclusive" in text.splitlines()  # a CPU cell
    wait_until_ended(env, submitted)
    second = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    assert second.returncode == 0, second.stdout + second.stderr
    rows = {r["spec"]["nodes"]: r for r in RowStore(results / "two" / "cpu").rows()}
    assert set(rows) == {1, 2} and all(r["status"] == "ok" for r in rows.values()), rows
    two = rows[2]
    assert two["env"]["world_size"] == 2 and {h["hostname"] for h in two["env"]["hosts"]} == {"n1", "n2"}
    # every node's torchrun got the node's CPUs, not one (the loader's workers need them)
    assert all(h["cpus_allowed"] == os.cpu_count() > 1 for h in two["env"]["hosts"])
    for row in rows.values():
        assert row["slurm"]["state"] == "COMPLETED" and row["slurm"]["exclusive"] is True
        assert row["slurm"]["exit_code"] == "0:0"


def test_a_refused_sbatch_is_that_cells_error_row_the_others_are_submitted_and_pending_ones_say_why(env, tmp_path):
    """memory_gb reaches the job as --mem (here more than any node has: sbatch refuses that cell); a cell that needs
    more nodes than the partition has pends, and the run says why (squeue's reason); the third cell runs."""
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2, memory_gb: 100000}\n"
                          "  - {nodes: 3, global_batch: 3}\n  - {nodes: 1, global_batch: 2, seed: 1}\n", "refused")
    results = tmp_path / "r"
    first = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    assert first.returncode == 1, first.stdout + first.stderr  # not a silent success
    (row,) = RowStore(results / "refused" / "cpu").rows()
    assert row["status"] == "error" and row["spec"]["nodes"] == 1 and "sbatch refused" in row["reason"]
    assert "Memory specification can not be satisfied" in row["reason"]  # sbatch's own message
    script = next(p for p in results.rglob("job.sbatch") if p.parent.name == row["run_id"]).read_text()
    assert "#SBATCH --mem=102400000M" in script.splitlines()
    submitted = jobs(results)
    assert len(submitted) == 2  # the other two cells were submitted all the same
    by_nodes = {json.loads((p.parent / "spec.json").read_text())["nodes"]: p.read_text().strip()
                for p in results.rglob("slurm_job_id")}
    wait_until_ended(env, [by_nodes[1]])
    second = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    subprocess.run(["scancel", by_nodes[3]], env=env, check=False)
    assert f"job {by_nodes[3]} pending (PENDING PartitionNodeLimit)" in second.stdout, second.stdout
    statuses = sorted((r["spec"]["nodes"], r["status"]) for r in RowStore(results / "refused" / "cpu").rows())
    assert statuses == [(1, "error"), (1, "ok")], second.stdout + second.stderr


def test_a_cancelled_job_is_interrupted_like_ctrl_c_and_a_rerun_runs_it_again(env, tmp_path):
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2, measured_steps: 2000}\n", "cancel")
    results = tmp_path / "r"
    assert harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm").returncode == 0
    (job,) = jobs(results)
    deadline = time.monotonic() + 120
    while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                         text=True).stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env, check=True)
    wait_until_ended(env, [job])
    collected = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    (row,) = RowStore(results / "cancel" / "cpu").rows()
    assert row["status"] == "interrupted" and f"SLURM job {job} was cancelled" in row["reason"], collected.stdout
    assert row["slurm"]["state"] == "CANCELLED"
    assert RowStore(results / "cancel" / "cpu").final_rows() == {}  # not final: a rerun submits it again
