"""The runner end to end on the tiny preset (subprocesses, as a user runs it)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.store import RowStore

ROOT = Path(__file__).resolve().parents[2]
CELL = "model: tiny, task: docvqa, strategy: lora, precision: fp32, lora_rank: 4, global_batch: 2, " \
       "warmup_steps: 1, measured_steps: 2, num_crops: 4"


def grid(tmp_path: Path, body: str, name: str = "g") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nhardware: {{gpu: cpu, gpus_per_node: 1}}\ndefaults: {{{CELL}}}\n{body}")
    return path


def harness(*args, **kwargs) -> subprocess.CompletedProcess:
    env = kwargs.pop("env", None) or {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=kwargs.pop("timeout", 600), **kwargs)


def harness_bg(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def rows(results: Path, matrix: str = "g", group: str = "cpu") -> list[dict]:
    return RowStore(results / matrix / group).rows()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
def test_a_small_grid_writes_one_row_per_cell_with_the_environment(tmp_path):
    path = grid(tmp_path, "axes: {attention: [eager, sdpa]}\n")
    out = harness("run", str(path), "--results", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout + out.stderr
    recorded = rows(tmp_path / "r")
    assert len(recorded) == 2 and {r["status"] for r in recorded} == {"ok"}
    assert {r["spec"]["attention"] for r in recorded} == {"eager", "sdpa"}
    for row in recorded:
        assert row["matrix"] == "g" and row["env"]["torch"] and row["env"]["world_size"] == 1
        assert Path(row["log"]).exists() and row["metrics"]["measured_steps"] == 2
        assert row["metrics"]["data_wait_s"] >= 0 and 0 <= row["metrics"]["data_wait_share"] < 1
        assert row["metrics"]["dataloader_workers"] == 0 and len(row["series"]["data_wait_s"]) == 3
    env = json.loads((tmp_path / "r" / "g" / "cpu" / "env.json").read_text())
    assert env["python"] and "transformers" in env
    assert "[2/2]" in out.stdout and "images/s" in out.stdout
    # a second run skips the finished cells
    again = harness("run", str(path), "--results", str(tmp_path / "r"))
    assert again.returncode == 0 and again.stdout.count("done (ok)") == 2 and len(rows(tmp_path / "r")) == 2


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_loses_and_duplicates_nothing(tmp_path):
    path = grid(tmp_path, "axes: {seed: [0, 1, 2]}\n")
    results = tmp_path / "r"
    runner = harness_bg("run", str(path), "--results", str(results))
    store = RowStore(results / "g" / "cpu")
    try:
        wait_for(lambda: store.path.exists() and len(store.rows()) >= 1)
        wait_for(lambda: any((results / "g" / "cpu" / "cells").rglob("procs.json")))
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    first = rows(results)
    assert 1 <= len(first) < 3
    out = harness("run", str(path), "--results", str(results))
    assert out.returncode == 0, out.stdout[-3000:]
    final = rows(results)
    ids = [r["run_id"] for r in final]
    assert len(final) == 3 and len(set(ids)) == 3
    assert [r["run_id"] for r in final[: len(first)]] == [r["run_id"] for r in first]  # earlier rows untouched


@pytest.mark.slow
def test_crash_timeout_and_oom_cells_become_rows_and_the_grid_goes_on(tmp_path):
    from training_core.data.synth import synthesize

    # training data (the pre-run check loads it) but no eval split, which only the accuracy cell reads: fails there
    synthesize("docvqa", tmp_path / "empty", n_train=4, n_eval=1)
    (tmp_path / "empty" / "eval.jsonl").unlink()
    path = grid(tmp_path, f"""include:
  - {{data: {tmp_path / 'empty'}, mode: accuracy}}
  - {{timeout_s: 3}}
  - {{memory_gb: 0.5, seed: 1}}
  - {{seed: 2}}
""")
    out = harness("run", str(path), "--results", str(tmp_path / "r"))
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    by_cell = {r["cell"]: r for r in rows(tmp_path / "r")}
    assert [by_cell[i]["status"] for i in range(4)] == ["error", "timeout", "oom", "ok"]
    assert "DataError" in by_cell[0]["reason"] and str(tmp_path / "empty") in by_cell[0]["reason"]
    assert "timeout of 3 s" in by_cell[1]["reason"]
    timed_out = str(Path(by_cell[1]["log"]).parent)  # nothing of the killed cell runs on: torchrun nor its workers
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if timed_out in " ".join(p.info["cmdline"] or [])]
    assert not (Path(timed_out) / "procs.json").exists()
    assert "out of memory under the cell's 0.5 GB limit" in by_cell[2]["reason"]
    for i in range(3):
        assert by_cell[i]["log_tail"] and Path(by_cell[i]["log"]).exists()
    assert "log_tail" not in by_cell[3]


@pytest.mark.parametrize(("sig", "code", "how"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
@pytest.mark.slow
def test_ctrl_c_or_sigterm_records_the_running_cell_as_interrupted(tmp_path, sig, code, how):
    path = grid(tmp_path, "include:\n  - {measured_steps: 2000}\n")
    results = tmp_path / "r"
    runner = harness_bg("run", str(path), "--results", str(results))
    try:
        wait_for(lambda: any((results / "g" / "cpu" / "cells").rglob("procs.json")) if (results / "g").exists() else False)
        time.sleep(6)
        runner.send_signal(sig)
        assert runner.wait(timeout=60) == code
    finally:
        runner.kill()
    (row,) = rows(results)
    assert row["status"] == "interrupted" and f"the runner was interrupted ({how})" in row["reason"]
    # not final: a rerun would repeat it
    assert RowStore(results / "g" / "cpu").final_rows() == {}


@pytest.mark.slow
def test_two_nodes_on_one_machine(tmp_path):
    path = grid(tmp_path, "include:\n  - {nodes: 2, gpus_per_node: 2, global_batch: 4}\n")
    results = tmp_path / "r"
    port = str(free_port())  # not a fixed one: tests run in parallel (make test)
    common = ("run", str(path), "--results", str(results), "--nnodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", port)
    node1 = harness_bg(*common, "--node-rank", "1")
    try:
        node0 = harness("run", *common[1:], "--node-rank", "0", timeout=300)
        node1_out = node1.communicate(timeout=300)[0]
    finally:
        node1.kill()
    assert node0.returncode == 0 and node1.returncode == 0, node0.stdout[-2000:] + node1_out[-2000:]
    (row,) = rows(results)  # only node 0 records
    assert row["status"] == "ok" and row["env"]["world_size"] == 4
    assert row["spec"]["nodes"] == 2 and row["metrics"]["images_per_s"] > 0
    cell_dir = Path(row["log"]).parent
    assert (cell_dir / "log.node0.txt").exists() and (cell_dir / "log.node1.txt").exists()


@pytest.mark.slow
def test_slurm_dry_run_writes_the_sbatch_scripts(tmp_path):
    path = grid(tmp_path, "include:\n  - {nodes: 2, gpus_per_node: 8, global_batch: 64, gpu: A100}\n")
    out = harness("run", str(path), "--results", str(tmp_path / "r"), "--launcher", "slurm", "--dry-run",
                  "--sbatch-arg=--partition=gpu", "--keep-model")
    assert out.returncode == 0, out.stdout + out.stderr
    (script,) = list((tmp_path / "r").rglob("job.sbatch"))
    text = script.read_text()
    cell_dir = script.parent
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --exclusive", "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu",
                 f"#SBATCH --output={cell_dir}/slurm-%j.log",
                 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "rdzv_port=$(( 20000 + SLURM_JOB_ID % 20000 ))"):  # a port per job
        assert line in text.splitlines(), line
    check, srun = [line for line in text.splitlines() if line.startswith("srun ")]
    node_step = "srun --ntasks-per-node=1 --cpus-per-task=$SLURM_CPUS_ON_NODE "  # the node's CPUs, not one
    assert check.startswith(node_step) and '-m harness.run.launchers.slurm_node check --head-node="$head_node" --gpu=A100 ' \
        "--gpus-per-node=8" in check  # every node checks the head node's name and its GPUs inside the job
    assert srun.startswith(node_step) and "-m torch.distributed.run --nnodes=$SLURM_NNODES --rdzv_id=$SLURM_JOB_ID" in srun
    assert '--rdzv_backend=c10d --rdzv_endpoint="$head_node:$rdzv_port" --nproc_per_node=8 -m training_core.run' in srun
    assert f"-m training_core.run --spec {cell_dir}/spec.json --out {cell_dir} --save-model" in srun  # --keep-model
    assert json.loads((cell_dir / "spec.json").read_text())["nodes"] == 2
    assert not (cell_dir / "slurm_job_id").exists() and rows(tmp_path / "r") == []
    # --nnodes and friends mean nothing under SLURM
    refused = harness("run", str(path), "--results", str(tmp_path / "r"), "--launcher", "slurm", "--nnodes", "2",
                      "--master-addr", "x")
    assert refused.returncode == 2 and "every cell is submitted with its own node count" in refused.stderr


@pytest.mark.slow
def test_slurm_a100_grid_from_a_cpu_machine_writes_ten_scripts_in_the_8xa100_group(tmp_path):
    out = harness("run", "a100_speed", "--results", str(tmp_path / "r"), "--launcher", "slurm", "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr  # no --allow-hardware-mismatch: checked in the jobs
    scripts = sorted((tmp_path / "r" / "a100_speed" / "8xA100" / "cells").glob("*/job.sbatch"))
    nodes = sorted(int(line.split("=")[1]) for s in scripts for line in s.read_text().splitlines()
                   if line.startswith("#SBATCH --nodes="))
    assert len(scripts) == 10 and nodes == [1] * 8 + [2, 4]
    assert [p.name for p in (tmp_path / "r" / "a100_speed").iterdir()] == ["8xA100"]


@pytest.mark.slow
def test_slurm_submission_and_collection_of_finished_and_failed_jobs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nn=$(cat "$0.count" 2>/dev/null || echo 1000); n=$((n + 1))\n'
                                    'echo $n > "$0.count"; echo "$n"\n')
    # the jobs pend until the test says they ran (bin/ran); scontrol cannot say what the partitions have
    (bin_dir / "sacct").write_text('#!/bin/bash\n[ -e "$(dirname "$0")/ran" ] || { echo PENDING; exit 0; }\n'
                                   'case "$2" in 1001) echo TIMEOUT;; 1002) echo RUNNING;; 1003) echo COMPLETED;; *) echo PENDING;; esac\n')
    (bin_dir / "squeue").write_text('#!/bin/bash\n[ -e "$(dirname "$0")/ran" ] || { echo "PENDING Priority"; exit 0; }\n'
                                    'echo "RUNNING None"\n')
    (bin_dir / "scontrol").write_text("#!/bin/bash\nexit 1\n")
    for tool in ("sbatch", "sacct", "squeue", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    path = grid(tmp_path, "hardware: {gpu: A100, gpus_per_node: 8}\n"
                          "include:\n  - {seed: 1, global_batch: 8}\n  - {seed: 2, global_batch: 8}\n"
                          "  - {seed: 3, nodes: 2, global_batch: 16}\n")
    path.write_text(path.read_text().replace("hardware: {gpu: cpu, gpus_per_node: 1}\n", ""))
    results = tmp_path / "r"
    # (the memory prediction of these A100 cells is beside the point here: test_launchers.py tests it under SLURM)
    first = harness("run", str(path), "--results", str(results), "--launcher", "slurm", "--no-estimate", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("submitted ") == 3 and rows(results, group="8xA100") == []
    assert first.stdout.count("pending (PENDING Priority)") == 3  # each new job's state, with the scheduler's reason
    (bin_dir / "ran").touch()
    cells = {json.loads((d / "spec.json").read_text())["seed"]: d for d in (results / "g" / "8xA100" / "cells").iterdir()}
    assert [(cells[s] / "slurm_job_id").read_text().strip() for s in (1, 2, 3)] == ["1001", "1002", "1003"]
    # job 1003 ran its in-job hardware check on a node without A100s (this machine): it writes the cell's row
    check = subprocess.run([sys.executable, "-m", "harness.run.launchers.slurm_node", "check", "--gpu=A100", "--gpus-per-node=8",
                            "--spec", str(cells[3] / "spec.json"), "--out", str(cells[3])], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "hardware mismatch on compute node" in check.stderr
    second = harness("run", str(path), "--results", str(results), "--launcher", "slurm", env=env)
    by_seed = {r["spec"]["seed"]: r for r in rows(results, group="8xA100")}
    assert set(by_seed) == {1, 3}  # job 1002 is still running: no row yet
    assert by_seed[1]["status"] == "timeout" and "SLURM job 1001 reached its time limit (TIMEOUT" in by_seed[1]["reason"]
    assert by_seed[3]["status"] == "error" and "no NVIDIA GPU" in by_seed[3]["reason"]
    assert "job 1002 running (RUNNING None)" in second.stdout and second.stdout.count("submitted ") == 0
    # --retry-failed resubmits the two failed cells (new jobs), leaves the running job alone, and the earlier
    # failure's result.json is not collected as the new job's result
    retry = harness("run", str(path), "--results", str(results), "--launcher", "slurm", "--retry-failed",
                    "--no-estimate", env=env)
    assert retry.stdout.count("job.sbatch as job ") == 2 and "job 1002 running" in retry.stdout, retry.stdout
    assert [(cells[s] / "slurm_job_id").read_text().strip() for s in (1, 2, 3)] == ["1004", "1002", "1005"]
    assert not (cells[3] / "result.json").exists() and len(rows(results, group="8xA100")) == 2


@pytest.mark.slow
def test_hardware_mismatch_is_refused_unless_allowed(tmp_path):
    path = grid(tmp_path, "include:\n  - {gpu: A100}\n")
    text = path.read_text().replace("hardware: {gpu: cpu, gpus_per_node: 1}", "hardware: {gpu: A100, gpus_per_node: 1}")
    path.write_text(text)
    refused = harness("run", str(path), "--results", str(tmp_path / "r"))
    assert refused.returncode == 2 and "no NVIDIA GPU" in refused.stderr and "--allow-hardware-mismatch" in refused.stderr
    allowed = harness("run", str(path), "--results", str(tmp_path / "r"), "--allow-hardware-mismatch")
    assert allowed.returncode == 0
    (row,) = rows(tmp_path / "r")
    assert row["status"] == "unsupported" and "no CUDA device" in row["reason"] and row["env"]["gpu_count"] == 0


def test_torn_last_line_is_ignored_with_a_warning_and_set_aside(tmp_path, capsys):
    store = RowStore(tmp_path)
    store.append({"run_id": "a", "status": "ok", "spec": {}, "metrics": {}})
    store.append({"run_id": "b", "status": "error", "spec": {}})
    with store.path.open("a") as handle:
        handle.write('{"run_id": "c", "sta')
    assert [r["run_id"] for r in store.rows()] == ["a", "b"]
    assert "ignoring a torn last line" in capsys.readouterr().err
    store.append({"run_id": "c", "status": "ok", "spec": {}, "metrics": {}})
    assert [r["run_id"] for r in store.rows()] == ["a", "b", "c"]
    (aside,) = tmp_path.glob("rows.jsonl.torn-*")
    assert aside.read_text() == '{"run_id": "c", "sta'
    store.path.write_text(store.path.read_text().replace('"b"', '"b'))
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not a JSON row"):
        store.rows()


@pytest.mark.slow
def test_missing_checkpoint_and_dataset_are_named_before_anything_runs(tmp_path):
    env_backup = os.environ.pop("MODEL", None)
    try:
        out = harness("run", "hateful_memes_accuracy", "--results", str(tmp_path / "r"), "--allow-hardware-mismatch",
                      env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "empty-hf")})
    finally:
        if env_backup is not None:
            os.environ["MODEL"] = env_backup
    assert out.returncode == 2
    assert "checkpoint 'models/Phi-3-vision-128k-instruct' not found" in out.stderr
    assert "download microsoft/Phi-3-vision-128k-instruct" in out.stderr and "MODEL=DIR" in out.stderr
    assert "HuggingFaceM4/the_cauldron/hateful_memes" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_repeats_and_profiles_plan(tmp_path):
    out = harness("plan", "nlvr2_accuracy", "--profile", "tiny", "--repeats", "3", "--json")
    specs = json.loads(out.stdout)
    assert len(specs) == 6 and sorted({s["seed"] for s in specs}) == [0, 1, 2]
    assert {(s["model"], s["data"], s["gpu"]) for s in specs} == {("tiny", "synthetic", "cpu")}
    assert {(s["strategy"], s["lr"]) for s in specs} == {("full", 3e-4), ("frozen_vision", 3e-3)}  # the profile patch
    text = harness("plan", "nlvr2_accuracy", "--profile", "tiny").stdout
    assert "profile patch: cells with {'strategy': 'full'} get lr=0.0003" in text


@pytest.mark.slow
def test_a_missing_data_path_is_refused_up_front(tmp_path):
    path = grid(tmp_path, "include:\n  - {data: /nonexistent/dataset}\n")
    out = harness("run", str(path), "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and "data '/nonexistent/dataset' not found" in out.stderr
    assert not (tmp_path / "r").exists()


def test_runs_that_would_run_nothing_are_errors(tmp_path, capsys):
    from harness.cli import main

    path = grid(tmp_path, "axes: {attention: [eager, sdpa]}\n")
    results = ["--results", str(tmp_path / "r")]
    assert main(["run", str(path), *results, "--filter", "strategi=lora"]) == 2
    assert "'strategi' is not a cell setting" in capsys.readouterr().err
    assert main(["run", str(path), *results, "--filter", "attention=flash_attention_2"]) == 2
    assert "matches none of the 2 runnable cell(s); the grid has attention: eager, sdpa" in capsys.readouterr().err
    assert main(["plan", str(path), "--filter", "strategy=qlora"]) == 2
    invalid = grid(tmp_path, "axes: {precision: [fp16]}\n", name="invalid")
    assert main(["run", str(invalid), *results]) == 2
    assert ("none of the grid's 1 cell(s) can run (invalid: fp16 mixed precision needs a CUDA GPU; on a CPU it would "
            "silently train in fp32)") in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_failed_cells_are_named_on_a_rerun_and_retried_on_request(tmp_path):
    from training_core.data.synth import synthesize

    # training data (the pre-run check loads it) but no eval split, which only the accuracy cell reads: fails there
    synthesize("docvqa", tmp_path / "empty", n_train=4, n_eval=1)
    (tmp_path / "empty" / "eval.jsonl").unlink()
    path = grid(tmp_path, f"include:\n  - {{data: {tmp_path / 'empty'}, mode: accuracy}}\n  - {{}}\n")
    results = ["--results", str(tmp_path / "r")]
    first = harness("run", str(path), *results)
    assert first.returncode == 1 and [r["status"] for r in rows(tmp_path / "r")] == ["error", "ok"]
    again = harness("run", str(path), *results)
    assert again.returncode == 1 and len(rows(tmp_path / "r")) == 2  # nothing rerun, but not a silent pass
    assert "1 cell(s) failed in an earlier run and were not rerun: 0 (error); --retry-failed reruns only" in \
        " ".join(again.stdout.split())
    retry = harness("run", str(path), *results, "--retry-failed")
    assert retry.returncode == 1 and "[1/1] cell 0" in retry.stdout  # only the failed cell ran again
    recorded = rows(tmp_path / "r")
    assert [r["status"] for r in recorded] == ["error", "ok", "error"]
    assert recorded[2]["finished_at"] != recorded[0]["finished_at"]  # run again, not the old result re-recorded


def test_report_and_results_problems_are_error_lines(tmp_path, capsys):
    from harness.cli import main

    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["report", str(directory)]) == 2
        assert "no rows.jsonl below it" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    path = grid(tmp_path, "axes: {attention: [eager]}\n")
    assert main(["run", str(path), "--results", str(tmp_path / "a-file" / "r")]) == 2
    assert f"--results {tmp_path / 'a-file' / 'r'}: cannot write there" in capsys.readouterr().err


@pytest.mark.slow
def test_one_runner_per_results_group_and_wait(tmp_path):
    # the cell only has to outlast the refused runner's start (it imports torch and builds the model first)
    path = grid(tmp_path, "include:\n  - {measured_steps: 12}\n")
    results = ["--results", str(tmp_path / "r")]
    first = harness_bg("run", str(path), *results)
    try:
        wait_for(lambda: any((tmp_path / "r" / "g" / "cpu" / "cells").rglob("procs.json"))
                 if (tmp_path / "r" / "g").exists() else False)
        refused = harness("run", str(path), *results)
        assert refused.returncode == 2 and f"is in use by another runner (PID {first.pid} on " in refused.stderr
        waiting = harness_bg("run", str(path), *results, "--wait")
        assert first.wait(timeout=300) == 0
        out = waiting.communicate(timeout=300)[0]
    finally:
        first.kill()
    assert waiting.returncode == 0 and "done (ok)" in out  # it waited, then found the cell finished
    (row,) = rows(tmp_path / "r")
    assert row["status"] == "ok"  # the refused runner touched nothing of the first one's


@pytest.mark.slow
def test_the_gradient_check_flags_the_2024_06_frozen_decoder_and_can_make_it_an_error(tmp_path):
    """Three real frozen_vision cells (DeepSpeed ZeRO-2, tiny preset): today's recipe trains its decoder; the 2024-06
    recipe's does not, which the row records, the run summary says and the report flags; with require_gradients
    that cell is an error."""
    path = grid(tmp_path, "include:\n  - {strategy: frozen_vision}\n"
                          "  - {strategy: frozen_vision, recipe_revision: '2024-06'}\n"
                          "  - {strategy: frozen_vision, recipe_revision: '2024-06', require_gradients: true}\n")
    results = tmp_path / "r"
    out = harness("run", str(path), "--results", str(results))
    assert out.returncode == 1, out.stdout + out.stderr  # the required check failed one cell
    by_cell = {r["cell"]: r for r in rows(results)}
    assert by_cell[0]["status"] == "ok" and by_cell[0]["gradients"]["flag"] is None
    assert by_cell[0]["metrics"]["untrained_params"] == 0
    flag = "decoder gets no gradient: 82.2K trainable parameters not trained"
    assert by_cell[1]["status"] == "ok" and by_cell[1]["gradients"]["flag"] == flag
    assert by_cell[1]["gradients"]["no_gradient"] == {"model.layers.*": 82176}
    assert f"warning: {flag}" in out.stdout  # the cell's line in the run's output
    assert by_cell[2]["status"] == "error" and by_cell[2]["reason"] == f"{flag} (require_gradients: true)"
    report = harness("report", str(results / "g" / "cpu"), "--out", str(tmp_path / "report.md"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report.md").read_text()
    assert ("Trainable parameters without a gradient in the first optimizer step: cell 1 (frozen_vision, recipe "
            f"2024-06): {flag} (of 99.6K)") in text


@pytest.mark.slow
def test_run_predicts_each_cells_memory_and_records_a_predicted_oom_without_running_it(tmp_path):
    """--estimate: the prediction is printed before the cell starts and kept in its row. A cell predicted not to fit
    its GPU (the real 4.15B preset in fp32 on a 16 GB V100) is an `unsupported` row that says it is a prediction,
    with --skip-predicted-oom (SLURM's default: test_launchers.py)."""
    path = grid(tmp_path, "include:\n  - {seed: 0}\n")
    results = tmp_path / "r"
    out = harness("run", str(path), "--results", str(results), "--estimate")
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = rows(results)
    assert row["status"] == "ok" and row["predicted"]["peak_bytes"] > 0 and row["predicted"]["phase"] == "backward"
    assert "predicted peak " in out.stdout and " MiB per rank at the backward" in out.stdout

    big = tmp_path / "big.yaml"
    big.write_text("name: big\nhardware: {gpu: V100-16GB, gpus_per_node: 1}\n"
                   "defaults: {model: phi-3-vision-128k, task: docvqa, strategy: lora, precision: fp32, num_crops: 1, "
                   "global_batch: 1, synthetic_train: 2, warmup_steps: 1, measured_steps: 1}\n")
    local = harness("run", str(big), "--results", str(results), "--skip-predicted-oom", "--allow-hardware-mismatch")
    assert local.returncode == 0, local.stdout + local.stderr
    (row,) = RowStore(results / "big" / "cpu").rows()
    assert row["status"] == "unsupported" and row["reason"].startswith("predicted not to fit: ")
    assert "V100-16GB: does not fit" in row["reason"] and "a prediction, not a measured OOM: not run" in row["reason"]
    assert row["predicted"]["fit"]["fits"] is False and row["predicted"]["peak_bytes"] > 16 * 2**30
    assert not (Path(row["log"]).parent / "log.txt").exists()  # the cell never started



@pytest.mark.slow
def test_a_planted_procs_json_gets_no_process_killed(tmp_path):
    """Issue 24 (1): a procs.json naming a process the runner did not start (its true PID and start time, readable
    from /proc), in the old format or with a made-up marker, kills nothing: not under --dry-run, not under run."""
    from harness.grid.file import load_grid

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        path = grid(tmp_path, "include:\n  - {seed: 0}\n")
        cell = tmp_path / "r" / "g" / "cpu" / "cells" / load_grid(path).cells[0].spec.run_id
        cell.mkdir(parents=True)
        created = psutil.Process(victim.pid).create_time()
        for planted in ({str(victim.pid): created}, {"marker": "0" * 32, "procs": {str(victim.pid): created}}):
            (cell / "procs.json").write_text(json.dumps(planted))
            out = harness("run", str(path), "--results", str(tmp_path / "r"), "--dry-run")
            assert out.returncode == 0, out.stdout + out.stderr
            time.sleep(0.5)
            assert victim.poll() is None, "a dry run signalled a process"
        out = harness("run", str(path), "--results", str(tmp_path / "r"))
        assert out.returncode == 0, out.stdout + out.stderr
        time.sleep(0.5)
        assert victim.poll() is None, "run signalled a process it did not start"
        assert rows(tmp_path / "r")[0]["status"] == "ok"
    finally:
        victim.kill()
        victim.wait()


def test_names_that_become_folders_cannot_escape_the_results(tmp_path, capsys):
    """Issue 24 (5): --group, the grid's name and the GPU name each name one folder under --results."""
    from harness.cli import main

    results = tmp_path / "deep" / "r"
    ok = grid(tmp_path, "include:\n  - {seed: 0}\n")
    for group in ("../../../x", str(tmp_path / "abs"), "a/b", ".hidden", ""):
        assert main(["run", str(ok), "--results", str(results), "--group", group, "--dry-run"]) == 2
        assert f"--group {group!r}: not a folder name" in capsys.readouterr().err
    dots = tmp_path / "dots.yaml"
    dots.write_text(ok.read_text().replace("name: g", "name: '..'"))
    assert main(["run", str(dots), "--results", str(results), "--dry-run"]) == 2
    assert "name" in capsys.readouterr().err
    slash = tmp_path / "slash.yaml"
    slash.write_text(ok.read_text().replace("gpu: cpu", "gpu: 'A100/../../x'"))
    assert main(["run", str(slash), "--results", str(results), "--dry-run"]) == 2
    assert "gpu" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dots.yaml", "g.yaml", "slash.yaml"]  # nothing written


@pytest.mark.parametrize("bad, said", [
    ("[1, 2]", "not a JSON object but list"), ("null", "not a JSON object but NoneType"),
    ('{"run_id": "x", "status": "ok", "spec": {}}', "no metrics"),
    ('{"run_id": "x", "status": "ok", "spec": {}, "metrics": {"images_per_s": "fast"}}', "metrics.images_per_s"),
    ('{"run_id": "x", "status": "ok", "spec": {}, "metrics": {}, "cell": "0"}', "cell '0' is not a number"),
    ('{"run_id": "x", "status": "fine", "spec": {}}', "status 'fine'"),
])
def test_a_row_of_the_wrong_shape_is_named_by_file_and_line_in_every_command(tmp_path, capsys, bad, said):
    """Issue 24 (11): run, report, compare and baseline say which line of which store is not a row (exit 2),
    instead of a traceback or a row silently counted."""
    from harness.cli import main

    good = {"run_id": "a", "matrix": "g", "cell": 0, "status": "ok", "spec": {"strategy": "lora"}, "metrics": {}}
    group = tmp_path / "r" / "g" / "cpu"
    group.mkdir(parents=True)
    (group / "rows.jsonl").write_text(json.dumps(good) + "\n" + bad + "\n")
    path = grid(tmp_path, "include:\n  - {seed: 0}\n")
    for command in (["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"],
                    ["report", str(group), "--out", str(tmp_path / "o.md")], ["compare", str(group), str(group)],
                    ["baseline", str(group), "--root", str(tmp_path / "bl")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{group / 'rows.jsonl'}:2: not a row" in err and said in err, (command, err)


def test_a_stub_or_foreign_result_json_is_not_a_finished_cell(tmp_path):
    """Issue 24 (12): {"status": "ok"}, another cell's result, a list or a directory: the cell is not finished, so it
    runs (no row without run_id or spec is appended)."""
    from harness.run.launchers.base import finished_result
    cell = tmp_path / "cell"
    cell.mkdir()
    real = {"run_id": "abc", "status": "ok", "spec": {}, "metrics": {"images_per_s": 1.0}}
    for text in ('{"status": "ok"}', json.dumps({**real, "run_id": "other"}), "[1]", "\xff"):
        (cell / "result.json").write_text(text, encoding="latin-1")
        assert finished_result(cell, "abc") is None, text
    (cell / "result.json").unlink()
    (cell / "result.json").mkdir()
    assert finished_result(cell, "abc") is None
    (cell / "result.json").rmdir()
    (cell / "result.json").write_text(json.dumps(real))
    assert finished_result(cell, "abc") == real


def test_a_store_file_that_is_a_directory_is_said(tmp_path, capsys):
    from harness.cli import main

    group = tmp_path / "r" / "g" / "cpu"
    (group / "rows.jsonl").mkdir(parents=True)
    assert main(["report", str(group), "--out", str(tmp_path / "o.md")]) == 2
    assert "rows.jsonl: not a file" in capsys.readouterr().err
    # Issue 24 (11): an env.json that is a directory: `run` refuses the group before running or writing anything
    path = grid(tmp_path, "include:\n  - {seed: 0}\n")
    (group / "rows.jsonl").rmdir()
    (group / "env.json").mkdir()
    for extra in (["--dry-run"], []):
        assert main(["run", str(path), "--results", str(tmp_path / "r"), "--group", "cpu", *extra]) == 2
        assert f"{group / 'env.json'}: not a file; move it aside" in capsys.readouterr().err
    assert sorted(p.name for p in group.iterdir()) == ["env.json"]


def test_flags_that_would_run_nothing_or_nonsense_are_refused(tmp_path, capsys):
    """Issue 24 (15, 21): --nnodes 0 or -1, --node-rank past the nodes, --master-port 99999999 and --num-crops 0
    are errors (exit 2) that name the flag, not runs that skip every cell or a silent default."""
    from harness.cli import main

    path = grid(tmp_path, "include:\n  - {seed: 0}\n")
    run = ["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"]
    for flags, said in ((["--nnodes", "0"], "--nnodes"), (["--nnodes", "-1"], "--nnodes"),
                        (["--master-port", "99999999"], "--master-port"), (["--node-rank", "-1"], "--node-rank")):
        with pytest.raises(SystemExit) as exc:
            main([*run, *flags])
        assert exc.value.code == 2 and said in capsys.readouterr().err
    assert main([*run, "--node-rank", "1"]) == 2
    assert "--node-rank 1 with --nnodes 1: a node's rank is 0 .. 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["data", "validate", "docvqa", str(tmp_path), "--num-crops", "0"])
    assert exc.value.code == 2 and "--num-crops" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_links_inside_a_results_group_are_refused_and_nothing_is_written_through_them(tmp_path, capsys):
    """Issue 24 (4): cells/<id> linked to another folder, or log.txt, spec.json, .lock, .env.json.tmp linked to a
    user's file: run (and --force, and a dry run) refuses the group before writing; the victims are unchanged."""
    from harness.cli import main
    from harness.grid.file import load_grid

    path = grid(tmp_path, "include:\n  - {seed: 0}\n")
    run_id = load_grid(path).cells[0].spec.run_id
    group = tmp_path / "r" / "g" / "cpu"
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "result.json").write_text("precious")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    cases = [("cells/" + run_id, victim_dir), (".lock", victim), (".env.json.tmp", victim),
             (f"cells/{run_id}/log.txt", victim), (f"cells/{run_id}/spec.json", victim)]
    for link, target in cases:
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        (group / link).parent.mkdir(parents=True, exist_ok=True)
        (group / link).symlink_to(target)
        for extra in (["--force"], ["--dry-run"], []):
            assert main(["run", str(path), "--results", str(tmp_path / "r"), *extra]) == 2, (link, extra)
            assert "holds symbolic links" in capsys.readouterr().err
        assert victim.read_text() == "mine" and (victim_dir / "result.json").read_text() == "precious"
        assert sorted(p.name for p in victim_dir.iterdir()) == ["result.json"]


def test_the_pre_run_check_names_bad_data_and_model_paths(tmp_path):
    """Issue 24 (20): DATA=/etc/hostname, a data directory with no data, a MODEL directory without config.json are
    named before anything runs (they passed the check and failed as an error row per cell); a real jsonl passes."""
    from harness.grid.file import load_grid
    from harness.grid.preflight import missing_inputs
    from training_core.data.synth import synthesize

    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    synthesize("docvqa", tmp_path / "twin", n_train=2, n_eval=1)
    path = grid(tmp_path, f"include:\n  - {{data: /etc/hostname}}\n  - {{data: {tmp_path / 'empty'}}}\n"
                          f"  - {{model: {tmp_path / 'model'}}}\n  - {{data: {tmp_path / 'twin'}}}\n")
    cells = load_grid(path).runnable
    problems = missing_inputs(cells)
    assert len(problems) == 3, problems
    assert any("'/etc/hostname'" in p for p in problems) and any(str(tmp_path / "empty") in p for p in problems)
    assert any(str(tmp_path / "model") in p and "config.json" in p for p in problems)
    assert missing_inputs([c for c in cells if c.spec.data == str(tmp_path / "twin")]) == []
