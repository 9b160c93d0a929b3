"""What the SLURM job script asks for, and how the runner reads SLURM's account of a job (fake sbatch/sacct/squeue
on PATH stand for a cluster here; tests/slurm runs the same paths on a real one)."""

import os
from pathlib import Path

import pytest

from harness.run.launchers.slurm import ENDED_BADLY as SLURM_ENDED_BADLY
from harness.run.launchers.slurm import sbatch_script, slurm_account, slurm_time
from tests.fake_commands import fake_command as _fake
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


def test_a_gpu_cell_on_its_own_nodes_asks_for_their_memory_unless_the_grid_says():
    """Issue 32 (8): GPU jobs asked for no memory, and sites that grant a default per CPU ended ZeRO-2 starts and
    QLoRA base builds OUT_OF_MEMORY."""
    assert "#SBATCH --mem=0" in script(gpu="A100")
    assert "#SBATCH --mem=1536M" in script(gpu="A100", memory_gb=1.5) and "#SBATCH --mem=0" not in \
        script(gpu="A100", memory_gb=1.5)
    assert not any(line.startswith("#SBATCH --mem") for line in script())  # a CPU cell: the site's default
    assert not any(line.startswith("#SBATCH --mem") for line in script(gpu="A100", exclusive=False))  # shared


def test_memory_threads_and_the_rendezvous_port_reach_the_job():
    lines = script(memory_gb=1.5, cpu_threads=3)
    assert "#SBATCH --mem=1536M" in lines and "export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3" in lines
    assert "rdzv_port=$(( 20000 + SLURM_JOB_ID % 20000 ))" in lines  # a port per job by default
    assert "rdzv_port=12345" in script(port=12345)  # --master-port is honoured
    assert all(line.startswith("srun --ntasks-per-node=1 --cpus-per-task=$SLURM_CPUS_ON_NODE ")
               for line in lines if line.startswith("srun"))




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


def test_a_job_id_slurm_gave_out_twice_is_read_from_the_cells_own_record(tmp_path, monkeypatch):
    """A controller that lost its state counts job ids from 1 again while accounting keeps the old records: sacct
    lists several (oldest first). The cell's own record (by job name) is read; without a name, the newest."""
    _fake(tmp_path, monkeypatch, "sacct", 'printf "RUNNING|0:0|phi3v-g-abc|2026-12-03T10:00:00\\n'
                                          'FAILED|3:0|phi3v-g-abc|2026-12-03T15:00:00\\n'
                                          'PENDING|0:0|newer-job|2026-12-03T16:00:00\\n"')
    assert slurm_account("7", "phi3v-g-abc").state == "FAILED"  # not the record a lost controller left RUNNING
    assert slurm_account("7").name == "newer-job" and slurm_account("7").state == "PENDING"


def test_slurms_placeholder_name_for_a_fresh_record_is_read_again_and_never_taken_for_another_job(tmp_path,
                                                                                                  monkeypatch):
    """slurmdbd names a job `allocation` when its record arrives without a name (seen on the test cluster for a job
    that ended within a second: sacct said `allocation` for a few seconds, then the job's name; the runner took it for
    someone else's job and recorded nothing, failing 2 of 3 SLURM tier runs). sacct is asked again; a placeholder that
    stays is an unknown name, judged by its state."""
    count = tmp_path / "count"
    _fake(tmp_path, monkeypatch, "sacct", f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n'
                                          'if [ "$n" -lt 2 ]; then echo "FAILED|3:0|allocation|2026-12-03T10:00:00"; '
                                          'else echo "FAILED|3:0|phi3v-g-abc|2026-12-03T10:00:00"; fi')
    account = slurm_account("7", "phi3v-g-abc", pause_s=0)
    assert (account.state, account.exit_code, account.name) == ("FAILED", "3:0", "phi3v-g-abc")
    assert count.read_text().strip() == "3"  # read three times: twice the placeholder, then the name

    _fake(tmp_path, monkeypatch, "sacct", 'echo "FAILED|3:0|allocation|2026-12-03T10:00:00"')
    account = slurm_account("7", "phi3v-g-abc", pause_s=0)
    assert (account.state, account.exit_code, account.name) == ("FAILED", "3:0", None)
    # another job's real name is still another job's
    _fake(tmp_path, monkeypatch, "sacct", 'echo "COMPLETED|0:0|someone-else|2026-12-03T10:00:00"')
    assert slurm_account("7", "phi3v-g-abc", pause_s=0).name == "someone-else"


def test_a_job_slurm_ended_badly_is_never_an_ok_row_whatever_its_result_says(tmp_path, monkeypatch, capsys):
    import json

    from harness.cli import main
    from harness.store import RowStore

    _fake(tmp_path, monkeypatch, "sbatch", "echo 4242")
    _fake(tmp_path, monkeypatch, "squeue", "true")
    _fake(tmp_path, monkeypatch, "scontrol", "exit 1")
    _fake(tmp_path, monkeypatch, "sacct", 'echo "PENDING|0:0"')
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
    """The in-job check (python -m harness.run.launchers.slurm_node check) as every node runs it before torchrun; jobs
    queued before the harness moved into stages name the old path, which still runs the same check."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    RunSpec(model="tiny").save(tmp_path / "spec.json")
    old = [sys.executable, "-m", "harness.launchers.slurm_node", "check", "--spec", str(tmp_path / "spec.json"),
           "--out", str(tmp_path)]
    check = [sys.executable, "-m", "harness.run.launchers.slurm_node", *old[3:]]
    for command in (check, old):
        ok = subprocess.run([*command, "--head-node=localhost"], cwd=root, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0 and not (tmp_path / "result.json").exists()
    shim = subprocess.run([*old, "--head-node=n9.nowhere.invalid"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert shim.returncode == 1 and "'n9.nowhere.invalid' does not resolve" in shim.stderr
    (tmp_path / "result.json").unlink()
    bad = subprocess.run([*check, "--head-node=n9.nowhere.invalid"], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1
    row = json.loads((tmp_path / "result.json").read_text())
    assert row["status"] == "error" and "head node name 'n9.nowhere.invalid' does not resolve on compute node" \
        in row["reason"] and "fix the nodes' DNS or /etc/hosts" in row["reason"]


# -------------------------------------------------------------------------------------- what the partition has
PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL Default=YES MaxNodes=UNLIMITED Nodes=n[1-2] State=UP TotalCPUs=4 "
    "TotalNodes=2 TRES=cpu=4,mem=24104M,node=2,billing=4\n"
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=2 Nodes=g[1-3] State=UP TotalNodes=3\n")
NODES = ("NodeName=n1 Arch=x86_64 CPUTot=2 Gres=(null) NodeAddr=127.0.1.11 Partitions=debug State=IDLE\n"
         "NodeName=n2 Arch=x86_64 CPUTot=2 Gres=(null) NodeAddr=127.0.1.12 Partitions=debug State=IDLE\n"
         "NodeName=g1 CPUTot=64 Gres=gpu:a100:8(S:0-1) Partitions=gpu State=IDLE\n"
         "NodeName=g2 CPUTot=64 Gres=gpu:8 Partitions=gpu State=IDLE\n"
         "NodeName=g3 CPUTot=64 Gres=gpu:4,nvme:1 Partitions=gpu State=IDLE\n")


def test_a_cell_that_could_never_start_on_its_partition_is_named_before_submission(tmp_path, monkeypatch):
    from harness.run.launchers.slurm import never_starts, node_gpus, partitions, requested_partition

    (tmp_path / "parts.txt").write_text(PARTITIONS)
    (tmp_path / "nodes.txt").write_text(NODES)
    _fake(tmp_path, monkeypatch, "scontrol", f'case "$3" in partition) cat {tmp_path}/parts.txt;; '
                                             f'node) cat {tmp_path}/nodes.txt;; esac')
    found = partitions()
    assert found[""] == found["debug"] and found["gpu"].max_nodes == 2 and found["gpu"].gpus == (8, 8, 4)
    assert [node_gpus(g) for g in ("(null)", "gpu:8", "gpu:a100:4(S:0-1),nvme:1", "nvme:1")] == [0, 8, 4, 0]
    assert [requested_partition(a) for a in ([], ["--partition=gpu"], ["-p", "gpu"], ["-pgpu"],
                                             ["--partition", "a,b"])] == ["", "gpu", "gpu", "gpu", "a,b"]

    def spec(**kw):
        return RunSpec(model="tiny", global_batch=48, **kw)
    assert never_starts(spec(nodes=2), found["debug"]) is None
    assert never_starts(spec(nodes=3), found["debug"]) == "the cell needs 3 node(s) and partition 'debug' has 2"
    assert never_starts(spec(gpu="A100", nodes=2, gpus_per_node=8), found["gpu"]) is None
    assert "allows at most 2 per job" in never_starts(spec(gpu="A100", nodes=4, gpus_per_node=2), found["gpu"])
    assert never_starts(spec(gpu="A100", nodes=1, gpus_per_node=16), found["gpu"]) == (
        "the cell needs 1 node(s) with 16 GPU(s) each and partition 'gpu' has 0 such node(s) (at most 8 GPU(s) on "
        "a node)")
    assert "has 0 such node(s)" in never_starts(spec(gpu="A100", nodes=1, gpus_per_node=1), found["debug"])


def test_force_cancels_the_cells_earlier_job_that_is_still_queued_before_resubmitting(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    log = tmp_path / "calls.txt"
    _fake(tmp_path, monkeypatch, "sbatch", f'echo sbatch >> {log}; n=$(grep -c sbatch {log}); echo $((4000 + n))')
    _fake(tmp_path, monkeypatch, "sacct", 'echo "PENDING|0:0"')
    _fake(tmp_path, monkeypatch, "squeue", f'grep -q "scancel $3" {log} 2>/dev/null || echo "PENDING Priority"')
    _fake(tmp_path, monkeypatch, "scancel", f'echo "scancel $1" >> {log}')
    _fake(tmp_path, monkeypatch, "scontrol", "exit 1")
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, global_batch: 2}\n")
    args = ["run", str(grid), "--results", str(tmp_path / "r"), "--launcher", "slurm"]
    assert main(args) == 0
    assert "job 4001 pending (PENDING Priority)" in capsys.readouterr().out
    assert main(args) == 0 and log.read_text().split("\n")[:1] == ["sbatch"]  # no rerun: the job is collected later
    assert main([*args, "--force"]) == 0
    out = capsys.readouterr().out
    assert "cancelled the cell's earlier job 4001 (pending) before resubmitting it" in out and "as job 4002" in out
    assert log.read_text().splitlines() == ["sbatch", "scancel 4001", "sbatch"]


# ------------------------------------------------------------------------------------------ launchers by name
def _inline_launcher():
    """A third launcher, as a newcomer would add one: the runner drives it through the interface alone."""
    import time as _time

    from harness.run.launchers.base import Job, Launcher, State
    from training_core.result import Outcome, build_row

    class Inline(Launcher):
        name, waits, hardware_here, inputs_here = "inline", True, False, False

        @classmethod
        def group_label(cls, machine, hw):
            return "inline"

        def dry_run(self, cell, cell_dir, spec_path):
            self.console.print(f"    would run {cell.spec.run_id} inline")

        def resume(self, cell, cell_dir, spec_path, afresh):
            return None

        def submit(self, cell, cell_dir, spec_path, spent_s=0.0):
            return Job(cell, cell_dir, spec_path, id="inline-1", log=cell_dir / "log.txt", data={"polls": 0})

        def poll(self, job):
            job.data["polls"] += 1
            return State(ended=job.data["polls"] >= 3, state="running")

        def cancel(self, job, status):
            raise AssertionError("not interrupted")

        def collect(self, job):
            row = build_row(run_id=job.cell.spec.run_id, spec=job.cell.spec.model_dump(mode="json"),
                            outcome=Outcome(status="ok"), env=self.rows.env, process_start=_time.time())
            return self.rows.finish(job.cell, {**row, "polls": job.data["polls"]}, job.log)
    return Inline


def test_a_third_launcher_is_one_module_the_runner_drives_through_the_interface(tmp_path, monkeypatch, capsys):
    import sys as _sys
    import types

    from harness.cli import main
    from harness.run import launchers
    from harness.store import RowStore

    module = types.ModuleType("inline_launcher")
    module.LAUNCHER = _inline_launcher()
    monkeypatch.setitem(_sys.modules, "inline_launcher", module)
    monkeypatch.setitem(launchers.NAMES, "inline", "inline_launcher")
    assert {name: launchers.get(name).name for name in launchers.NAMES} == {"local": "local", "slurm": "slurm",
                                                                              "inline": "inline"}
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, global_batch: 2}\n")
    args = ["run", str(grid), "--results", str(tmp_path / "r"), "--launcher", "inline"]
    assert main([*args, "--dry-run"]) == 0 and "would run" in capsys.readouterr().out
    assert main(args) == 0
    (row,) = RowStore(tmp_path / "r" / "g" / "inline").rows()
    assert row["status"] == "ok" and row["polls"] == 3 and row["matrix"] == "g"  # watched until it ended
    with pytest.raises(KeyError, match="unknown launcher 'k8s'"):
        launchers.get("k8s")


def test_under_slurm_a_cell_predicted_not_to_fit_is_not_submitted_unless_asked(tmp_path, monkeypatch, capsys):
    """The SLURM default for a predicted OOM (the prediction itself is faked here; the real one: test_runner.py)."""
    import harness.run.runner
    from harness.cli import main
    from harness.store import RowStore

    log = tmp_path / "calls.txt"
    _fake(tmp_path, monkeypatch, "sbatch", f"echo sbatch >> {log}; echo 51")
    _fake(tmp_path, monkeypatch, "sacct", 'echo "PENDING|0:0"')
    # pending until cancelled (the resubmission below cancels the earlier job and waits until squeue drops it)
    _fake(tmp_path, monkeypatch, "scancel", f"touch {tmp_path / 'cancelled'}")
    _fake(tmp_path, monkeypatch, "squeue", f'[ -e {tmp_path / "cancelled"} ] || echo "PENDING Priority"')
    _fake(tmp_path, monkeypatch, "scontrol", "exit 1")
    too_big = {"peak_bytes": 40 * 2**30, "phase": "backward",
               "fit": {"gpu": "V100", "fits": False, "reason": "does not fit (44.5 of 31.7 GiB)", "rule": "the rule"}}
    monkeypatch.setattr(harness.run.runner, "predict", lambda spec_path, cell_dir, timeout_s: too_big)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: V100, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, precision: fp16, global_batch: 2}\n")
    args = ["run", str(grid), "--results", str(tmp_path / "r"), "--launcher", "slurm"]
    assert main(args) == 0 and not log.exists()  # not submitted
    (row,) = RowStore(tmp_path / "r" / "g" / "1xV100").rows()
    assert row["status"] == "unsupported" and row["predicted"] == too_big
    assert row["reason"].startswith("predicted not to fit: 40.00 GiB per rank at the backward, V100: does not fit")
    assert "a prediction, not a measured OOM: not run (run it with --run-predicted-oom)" in row["reason"]
    assert "predicted peak 40.00 GiB per rank at the backward; V100: does not fit" in capsys.readouterr().out
    assert main([*args, "--force", "--run-predicted-oom"]) == 0
    assert log.read_text().splitlines() == ["sbatch"]
    assert not (tmp_path / "cancelled").exists()
    assert main([*args, "--force", "--no-estimate"]) == 0  # no prediction asked: submitted
    assert log.read_text().splitlines() == ["sbatch", "sbatch"]
    assert (tmp_path / "cancelled").exists()  # after the earlier, still pending job was cancelled


def test_a_job_script_runs_nothing_injected_through_its_values(tmp_path):
    """Issue 24 (2): every value written into job.sbatch is quoted. The script, run by bash with stub `srun` and
    `scontrol`, passes paths and names holding $(...), backticks and quotes through as text; a GPU name that is not
    a plain word is refused where the spec is made, and a line break in an sbatch option where the script is."""
    import subprocess

    import pydantic

    evil = tmp_path / "pwned"
    inject = f"$(touch {evil})`touch {evil}`'\";touch {evil};"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" >> {tmp_path / 'srun.args'}\n")
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho n1\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    with pytest.raises(pydantic.ValidationError, match="gpu"):
        RunSpec(model="tiny", gpu=f"A100{inject}")
    with pytest.raises(ValueError, match="line break"):
        sbatch_script(RunSpec(model="tiny"), Path("/c/spec.json"), Path("/c"), job_name="j\ntouch x", timeout_s=60,
                      workdir=Path("/w"))
    cell = tmp_path / f"cell{inject}"
    workdir = tmp_path / f"work{inject}"
    workdir.mkdir(parents=True)  # the injected text holds slashes: nested folders
    text = sbatch_script(RunSpec(model="tiny", gpu="A100", cpu_threads=2), cell / "spec.json", cell,
                         job_name=f"job{inject}", timeout_s=60, workdir=workdir, python=f"/x/py{inject}",
                         extra=[f"--comment={inject}"])
    job = tmp_path / "job.sbatch"
    job.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "n1", "SLURM_CPUS_ON_NODE": "2"}
    out = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not evil.exists()
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert f"/x/py{inject}" in args and str(cell / "spec.json") in args and str(cell) in args  # as text, whole
    assert "--gpu=A100" in args and f"rendezvous n1:{20000 + 7}" in out.stdout
