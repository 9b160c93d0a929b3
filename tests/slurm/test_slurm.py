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


def test_a_refused_sbatch_is_that_cells_error_row_the_others_are_submitted_and_threads_reach_the_job(env, tmp_path):
    """memory_gb reaches the job as --mem (here more than any node has: sbatch refuses that cell); a cell that needs
    more nodes than the partition has is said so at submission and not submitted (it would pend for ever); the third
    cell runs, with its cpu_threads in the job's environment."""
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2, memory_gb: 100000}\n"
                          "  - {nodes: 3, global_batch: 3}\n  - {nodes: 1, global_batch: 2, seed: 1, cpu_threads: 2}\n",
                "refused")
    results = tmp_path / "r"
    first = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    assert first.returncode == 1, first.stdout + first.stderr  # not a silent success
    rows = {r["spec"]["nodes"]: r for r in RowStore(results / "refused" / "cpu").rows()}
    assert set(rows) == {1, 3} and all(r["status"] == "error" for r in rows.values())
    assert "sbatch refused" in rows[1]["reason"]
    assert "Memory specification can not be satisfied" in rows[1]["reason"]  # sbatch's own message
    script = next(p for p in results.rglob("job.sbatch") if p.parent.name == rows[1]["run_id"]).read_text()
    assert "#SBATCH --mem=102400000M" in script.splitlines()
    assert "not submitted: the cell needs 3 node(s) and partition 'debug' has 2" in rows[3]["reason"]
    assert "pend for ever" in rows[3]["reason"] and "--sbatch-arg=--partition=" in rows[3]["reason"]
    (job,) = jobs(results)  # the third cell was submitted all the same
    wait_until_ended(env, [job])
    second = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    statuses = sorted((r["spec"]["nodes"], r["status"]) for r in RowStore(results / "refused" / "cpu").rows())
    assert statuses == [(1, "error"), (1, "ok"), (3, "error")], second.stdout + second.stderr
    ok = next(r for r in RowStore(results / "refused" / "cpu").rows() if r["status"] == "ok")
    assert [h["omp_num_threads"] for h in ok["env"]["hosts"]] == ["2"]  # cpu_threads: 2 reached the job


def test_pending_jobs_are_listed_with_slurms_reason_and_the_time_limit_never_rounds_to_zero(env, tmp_path):
    """A held job (--sbatch-arg=--hold) pends: the run lists it with squeue's reason, at submission and later, and
    never records a row for it. `--timeout 0.5` asks for one second, which SLURM rounds up to a minute: never
    00:00:00, which SLURM reads as no limit at all."""
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2}\n", "held")
    results = tmp_path / "r"
    args = ("run", str(path), "--results", str(results), "--launcher", "slurm", "--timeout", "0.5",
            "--sbatch-arg=--hold")
    first = harness(env, *args)
    (job,) = jobs(results)
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"job {job} pending (PENDING JobHeldUser)" in first.stdout, first.stdout
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True,
                               timeout=60).stdout
        assert "TimeLimit=00:01:00" in shown.split(), shown
        again = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
        assert f"job {job} pending (PENDING JobHeldUser)" in again.stdout, again.stdout
        assert "run this command again once it has ended" in again.stdout
        assert RowStore(results / "held" / "cpu").rows() == []
    finally:
        subprocess.run(["scancel", job], env=env, check=False)


def test_a_job_slurm_ended_failed_is_an_error_row_although_its_result_says_ok(env, tmp_path):
    """The race the port clash caused: rank 0 wrote an `ok` result.json, then the job failed. Here a real job exits
    3 and the cell's result.json says ok: SLURM's account wins, and the row keeps its state and exit code."""
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2}\n", "failed")
    results = tmp_path / "r"
    assert harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm",
                   "--dry-run").returncode == 0
    (cell,) = (results / "failed" / "cpu" / "cells").iterdir()
    spec = json.loads((cell / "spec.json").read_text())
    # named as the cell's own job (phi3v-<grid>-<run_id>): a job of another name is never collected as the cell's
    submitted = subprocess.run(["sbatch", "--parsable", f"--job-name=phi3v-failed-{cell.name}",
                                f"--output={cell}/slurm-%j.log", "--wrap", "exit 3"],
                               env=env, capture_output=True, text=True, timeout=60, check=True)
    job = submitted.stdout.strip()
    (cell / "slurm_job_id").write_text(job + "\n")
    (cell / "result.json").write_text(json.dumps({"run_id": cell.name, "status": "ok", "reason": None, "spec": spec,
                                                  "metrics": {"images_per_s": 1.0}, "env": {}}))
    wait_until_ended(env, [job])
    collected = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    assert collected.returncode == 1, collected.stdout + collected.stderr
    assert len(RowStore(results / "failed" / "cpu").rows()) == 1, collected.stdout + collected.stderr
    (row,) = RowStore(results / "failed" / "cpu").rows()
    assert row["status"] == "error" and f"SLURM job {job} failed (FAILED, exit 3:0) although its result.json says " \
        "ok" in row["reason"]
    assert row["slurm"]["state"] == "FAILED" and row["slurm"]["exit_code"] == "3:0"
    # issue 31: a job id in slurm_job_id whose job has another name (someone else's) is neither collected nor cancelled
    other = subprocess.run(["sbatch", "--parsable", "--job-name=someone-else", "--wrap", "exit 0"], env=env,
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    wait_until_ended(env, [other])
    elsewhere = tmp_path / "r2"
    assert harness(env, "run", str(path), "--results", str(elsewhere), "--launcher", "slurm",
                   "--dry-run").returncode == 0
    (fresh,) = (elsewhere / "failed" / "cpu" / "cells").iterdir()
    (fresh / "slurm_job_id").write_text(other + "\n")
    again = harness(env, "run", str(path), "--results", str(elsewhere), "--launcher", "slurm")
    assert again.returncode == 1 and f"job {other} in" in again.stderr and "not this cell's job" in again.stderr
    assert RowStore(elsewhere / "failed" / "cpu").rows() == []  # nothing collected from it


def test_jobs_that_share_their_nodes_meet_in_their_own_rendezvous_and_master_port_is_honoured(env, tmp_path):
    """Two 2-node jobs run at once on the same two nodes (--slurm-shared, 2 GB each): each job's rendezvous is on a
    port of its own (from its id), so both finish ok, and each row says its nodes were shared. A third job uses the
    port given by --master-port."""
    cells = "include:\n  - {nodes: 2, global_batch: 4, memory_gb: 2, measured_steps: 12}\n" \
            "  - {nodes: 2, global_batch: 4, memory_gb: 2, measured_steps: 12, seed: 1}\n"
    path = grid(tmp_path, cells, "shared")
    results = tmp_path / "r"
    first = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm", "--slurm-shared")
    assert first.returncode == 0, first.stdout + first.stderr
    submitted = jobs(results)
    wait_until_ended(env, submitted)
    times = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End,NodeList", "-j", ",".join(submitted)],
                           env=env, capture_output=True, text=True, timeout=60).stdout.split()
    (a, a_start, a_end, a_nodes), (b, b_start, b_end, b_nodes) = [line.split("|") for line in times]
    assert a_start < b_end and b_start < a_end and a_nodes == b_nodes == "n[1-2]", times  # they ran at once
    second = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm", "--slurm-shared")
    rows = RowStore(results / "shared" / "cpu").rows()
    assert [r["status"] for r in rows] == ["ok", "ok"], second.stdout + second.stderr
    assert all(r["slurm"]["exclusive"] is False and r["env"]["world_size"] == 2 for r in rows)
    ports = {r["slurm"]["job"]: _rendezvous(Path(r["log"])) for r in rows}
    assert ports == {j: f"n1:{20000 + int(j) % 20000}" for j in submitted}  # one store per job

    path = grid(tmp_path, "include:\n  - {nodes: 2, global_batch: 4}\n", "port")
    args = ("run", str(path), "--results", str(tmp_path / "p"), "--launcher", "slurm", "--master-port", "23456")
    assert harness(env, *args).returncode == 0
    wait_until_ended(env, jobs(tmp_path / "p"))
    assert harness(env, *args).returncode == 0
    (row,) = RowStore(tmp_path / "p" / "port" / "cpu").rows()
    assert row["status"] == "ok" and _rendezvous(Path(row["log"])) == "n1:23456"


def _rendezvous(log: Path) -> str:
    """The rendezvous endpoint the job script announced in its log."""
    (line,) = [ln for ln in log.read_text().splitlines() if ln.startswith("phi3v: job ")]
    return line.rsplit(" ", 1)[1]


def test_sacct_that_cannot_answer_is_an_error_that_says_how_to_enable_accounting(env, tmp_path):
    """The same cluster seen through a slurm.conf without accounting: sacct fails, and the run says so (and how to
    enable it) and exits non-zero, instead of calling a finished job 'submitted earlier' for ever."""
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2}\n", "noacct")
    results = tmp_path / "r"
    assert harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm").returncode == 0
    (job,) = jobs(results)
    wait_until_ended(env, [job])
    conf = tmp_path / "slurm.conf"
    conf.write_text(Path(env["SLURM_CONF"]).read_text().replace("accounting_storage/slurmdbd",
                                                                 "accounting_storage/none"))
    collected = harness({**env, "SLURM_CONF": str(conf)}, "run", str(path), "--results", str(results), "--launcher",
                        "slurm")
    assert collected.returncode == 1, collected.stdout + collected.stderr
    assert f"error: cell 0 (job {job}): sacct failed (" in collected.stderr
    assert "AccountingStorageType=accounting_storage/slurmdbd" in collected.stderr
    assert "run this command again" not in collected.stdout and RowStore(results / "noacct" / "cpu").rows() == []
    assert harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm").returncode == 0
    (row,) = RowStore(results / "noacct" / "cpu").rows()  # with accounting back, the row is collected
    assert row["status"] == "ok"


def test_a_head_node_name_that_does_not_resolve_on_the_node_ends_the_job_saying_which(env, tmp_path):
    """SLURM reaches the nodes by NodeAddr, so a cluster works although its node names are not in DNS; torchrun's
    rendezvous needs the head node's name. With n1's line gone from /etc/hosts, the job ends before torchrun and
    the row names the name and the node."""
    hosts = Path("/etc/hosts")
    saved = hosts.read_text()
    path = grid(tmp_path, "include:\n  - {nodes: 1, global_batch: 2}\n", "dns")
    results = tmp_path / "r"
    try:
        hosts.write_text("".join(line for line in saved.splitlines(keepends=True)
                                 if not line.startswith("127.0.1.11 n1 ")))
        first = harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm",
                        "--sbatch-arg=--nodelist=n1")
        assert first.returncode == 0, first.stdout + first.stderr
        wait_until_ended(env, jobs(results))
    finally:
        hosts.write_text(saved)
    harness(env, "run", str(path), "--results", str(results), "--launcher", "slurm")
    (row,) = RowStore(results / "dns" / "cpu").rows()
    assert row["status"] == "error" and "head node name 'n1' does not resolve on compute node n1" in row["reason"]


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
    assert len(RowStore(results / "cancel" / "cpu").rows()) == 1, collected.stdout + collected.stderr
    (row,) = RowStore(results / "cancel" / "cpu").rows()
    assert row["status"] == "interrupted" and f"SLURM job {job} was cancelled" in row["reason"], collected.stdout
    assert row["slurm"]["state"] == "CANCELLED"
    assert RowStore(results / "cancel" / "cpu").final_rows() == {}  # not final: a rerun submits it again
