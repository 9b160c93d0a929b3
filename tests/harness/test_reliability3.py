"""Reliability, round 3 (issue 31): what the harness reads is checked as strictly as what it writes. One helper per
rule (harness/readers.py: regular files only, never through a link, bounded, UTF-8; RowStore.strangers: nothing but
the store's own regular files in a group; proctree.owner: a process record is honoured only by the group and host
that wrote it), and a test per instance. Each expects `error:` naming the file or key, exit 2, no traceback, nothing
recorded lost, and no hang."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import RowStore
from tests.fake_commands import fake_command as _fake

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "before_stages"
GRID = FIXTURE / "before_stages.yaml"


def _group(tmp_path: Path, name: str = "results") -> Path:
    shutil.copytree(FIXTURE / "results", tmp_path / name)
    return tmp_path / name / "before_stages" / "cpu"


def _cell(group: Path) -> Path:
    return sorted((group / "cells").iterdir())[0]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err




# ------------------------------------------------------------------------------------- 1. another run's records
def test_a_copied_groups_process_record_ends_nothing_of_the_original(tmp_path):
    """`cp -r A B; run --group B` ended A's running cell: B honoured A's procs.json. A record names its owner (host
    and cell directory); a copy's record is not B's to act on, while A itself still ends its own leftovers."""
    from rich.console import Console

    from harness.run import proctree
    from harness.run.launchers.base import RowFinisher
    from harness.run.launchers.local import LocalLauncher
    from harness.run.options import LocalOptions

    a = _group(tmp_path, "a")
    marker = proctree.new_marker()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, proctree.MARKER: marker})
    try:
        proctree.save(_cell(a) / "procs.json", {victim.pid: proctree.snapshot(victim.pid)[victim.pid]}, marker)
        b = tmp_path / "b" / "before_stages" / "cpu"
        shutil.copytree(a, b)
        launcher = LocalLauncher(LocalOptions(), RowFinisher("before_stages", None, {}), Console(quiet=True))
        launcher.prepare(None, _cell(b))
        time.sleep(0.3)
        assert victim.poll() is None, "the copy's record ended the original's process"
        launcher.prepare(None, _cell(a))  # the group that wrote it: ends it, as before
        victim.wait(timeout=10)
        assert victim.returncode is not None
    finally:
        victim.kill()


@pytest.mark.parametrize("planted", ["-u root", "1,2,3 --signal=KILL", "777\n--user=root"])
def test_a_slurm_job_id_file_that_holds_options_is_refused_before_any_scancel(tmp_path, monkeypatch, capsys,
                                                                              planted):
    log = tmp_path / "calls.txt"
    for command in ("scancel", "sacct", "squeue", "sbatch", "scontrol"):
        _fake(tmp_path, monkeypatch, command, f'echo "{command} $*" >> {log}; exit 1')
    group = _group(tmp_path)
    # the SLURM group of this grid is named by its hardware ('cpu'): the fixture's folder
    (_cell(group) / "slurm_job_id").write_text(planted + "\n")
    assert main(["run", str(GRID), "--results", str(tmp_path / "results"), "--launcher", "slurm", "--force"]) == 2
    assert "is not a SLURM job id (digits only)" in _err(capsys)
    assert not log.exists() or "scancel" not in log.read_text()


def test_another_jobs_id_is_neither_cancelled_nor_collected(tmp_path, monkeypatch, capsys):
    """`777` in slurm_job_id: sacct says job 777 is someone else's (its name), so it is not scancelled on --force and
    its state is not collected as the cell's row."""
    log = tmp_path / "calls.txt"
    _fake(tmp_path, monkeypatch, "sacct", f'echo "sacct $*" >> {log}; echo "RUNNING|0:0|someone-elses-job"')
    _fake(tmp_path, monkeypatch, "scancel", f'echo "scancel $*" >> {log}')
    _fake(tmp_path, monkeypatch, "squeue", 'echo "RUNNING None"')
    _fake(tmp_path, monkeypatch, "sbatch", f'echo "sbatch $*" >> {log}; echo 4242')
    _fake(tmp_path, monkeypatch, "scontrol", "exit 1")
    group = _group(tmp_path)
    (group / "rows.jsonl").write_bytes(b"")  # the cells are not done: a job of theirs would be collected
    (_cell(group) / "slurm_job_id").write_text("777\n")
    results = ["--results", str(tmp_path / "results"), "--launcher", "slurm"]
    assert main(["run", str(GRID), *results]) == 1
    err = _err(capsys)
    assert f"job 777 in {_cell(group) / 'slurm_job_id'} is 'someone-elses-job', not this cell's job" in err
    assert RowStore(group).rows() == []  # job 777's state is no row of this cell
    assert main(["run", str(GRID), *results, "--force"]) == 1
    assert "not this cell's job" in _err(capsys)
    assert "scancel" not in log.read_text()  # never cancelled: it is not ours


def test_a_grids_hardware_gpu_cannot_name_a_path(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: x/../../../../escaped, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, gpu: cpu, global_batch: 2}\n")
    assert main(["run", str(grid), "--results", str(tmp_path / "r"), "--launcher", "slurm", "--dry-run"]) == 2
    assert "hardware.gpu: String should match pattern" in _err(capsys)
    assert not list(tmp_path.rglob("job.sbatch")) and not (tmp_path / "escaped").exists()


def test_report_of_a_dotted_group_path_writes_under_reports(tmp_path, monkeypatch, capsys):
    import harness.report.render as render

    monkeypatch.setattr(render, "REPORTS", tmp_path / "reports")
    group = _group(tmp_path)
    dotted = group / ".." / "cpu"
    assert main(["report", str(dotted), "--no-plots"]) == 0
    assert (tmp_path / "reports" / "before_stages" / "cpu.md").is_file()
    assert not (tmp_path / "cpu.md").exists() and not (tmp_path / "reports" / "..").resolve().joinpath("cpu.md").exists()


@pytest.mark.parametrize("linked", ["rows.jsonl", "group"])
def test_report_compare_and_baseline_do_not_read_through_links(tmp_path, capsys, linked):
    group = _group(tmp_path)
    if linked == "rows.jsonl":
        (tmp_path / "elsewhere.jsonl").write_bytes((group / "rows.jsonl").read_bytes())
        (group / "rows.jsonl").unlink()
        (group / "rows.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
        target = group
    else:
        target = tmp_path / "link-group"
        target.symlink_to(group, target_is_directory=True)
    for command in (["report", str(target), "--out", str(tmp_path / "r.md"), "--no-plots"],
                    ["compare", str(target), str(target)], ["baseline", str(target), "--root", str(tmp_path / "bl")]):
        assert main(command) == 2, command
        assert "symbolic link" in _err(capsys), command
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "bl").exists()


def test_baseline_never_copies_a_linked_or_undecodable_env_json(tmp_path, capsys):
    group = _group(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    (group / "env.json").unlink()
    (group / "env.json").symlink_to(secret)
    assert main(["baseline", str(group), "--root", str(tmp_path / "bl")]) == 2
    assert "symbolic link" in _err(capsys)
    (group / "env.json").unlink()
    (group / "env.json").write_bytes(b'{"host": "caf\xe9"}')
    assert main(["baseline", str(group), "--root", str(tmp_path / "bl")]) == 2
    assert "env.json" in _err(capsys)
    assert not (tmp_path / "bl").exists()  # nothing half-stored: a retry after the fix is not refused
    (group / "env.json").write_text('{"host": "x"}')
    assert main(["baseline", str(group), "--root", str(tmp_path / "bl")]) == 0
    assert "hunter2" not in "".join(p.read_text() for p in (tmp_path / "bl").rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- 2. wrong records
def test_the_gate_refuses_non_finite_rows_and_tolerances_that_pass_anything(tmp_path, capsys):
    group = _group(tmp_path)
    text = (group / "rows.jsonl").read_text()
    row = json.loads(text.splitlines()[0])
    infinite = tmp_path / "inf" / "before_stages" / "cpu"
    infinite.mkdir(parents=True)
    (infinite / "rows.jsonl").write_text(json.dumps(row).replace(
        f'"images_per_s": {row["metrics"]["images_per_s"]}', '"images_per_s": Infinity') + "\n")
    assert main(["compare", str(group), str(infinite)]) == 2
    assert "metrics.images_per_s is inf, not a finite number" in _err(capsys)
    assert main(["compare", str(infinite), str(group)]) == 2  # a baseline holding Infinity passes nothing either
    _err(capsys)
    for rules, said in (("default: {relative: 1.0e9}\n", "default.relative: Input should be less than or equal to 1"),
                        ("metrics: {images_per_s: {absolute: 1.0e300}}\n", "would pass anything")):
        (tmp_path / "rules.yaml").write_text(rules)
        assert main(["compare", str(group), str(group), "--rules", str(tmp_path / "rules.yaml")]) == 2
        assert said in _err(capsys)


def test_baseline_refuses_a_group_a_run_is_still_writing(tmp_path, capsys):
    group = _group(tmp_path)
    with RowStore(group).lock():
        assert main(["baseline", str(group), "--root", str(tmp_path / "bl")]) == 2
        assert "a run is still writing this group (PID" in _err(capsys)
    assert not (tmp_path / "bl").exists()
    assert main(["baseline", str(group), "--root", str(tmp_path / "bl")]) == 0


# ------------------------------------------------------------------------------------- 3. hangs
def _in_time(args: list[str], seconds: float = 60) -> subprocess.CompletedProcess:
    """A command in a fresh interpreter that must end on its own (a hang fails the test instead of stalling it)."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=root, capture_output=True, text=True,
                          timeout=seconds, env={**os.environ, "PYTHONPATH": str(root)})


@pytest.mark.slow  # `run` without --dry-run (refused before any cell starts)
@pytest.mark.parametrize("where", ["cell/result.json", "cell/procs.json", ".lock"])
def test_a_named_pipe_in_a_group_is_refused_not_waited_on(tmp_path, where):
    group = _group(tmp_path)
    path = _cell(group) / where.split("/")[1] if where.startswith("cell/") else group / where
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    for extra in (["--dry-run"], ["--force"]):
        out = _in_time(["run", str(GRID), "--results", str(tmp_path / "results"), *extra])
        assert out.returncode == 2 and f"{path} (a named pipe (FIFO))" in out.stderr, out.stderr[-2000:]


def test_a_directory_where_a_result_belongs_is_an_error_not_a_traceback(tmp_path, capsys):
    group = _group(tmp_path)
    (_cell(group) / "result.json").unlink()
    (_cell(group) / "result.json").mkdir()
    for extra in ([], ["--force"]):
        assert main(["run", str(GRID), "--results", str(tmp_path / "results"), *extra]) == 2
        assert f"{_cell(group) / 'result.json'} (a directory)" in _err(capsys)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "bomb", "deep", "utf16", "latin1"])
def test_a_rules_file_is_read_as_strictly_as_a_grid(tmp_path, kind):
    group = _group(tmp_path)
    rules = tmp_path / "rules.yaml"
    if kind == "fifo":
        os.mkfifo(rules)
    elif kind == "dev-zero":
        rules = Path("/dev/zero")
    elif kind == "bomb":
        lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
        rules.write_text("\n".join([*lines, "only: *a9"]) + "\n")
    elif kind == "deep":
        rules.write_text("only: " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "utf16":
        rules.write_bytes("only: [images_per_s]\n".encode("utf-16"))
    else:
        rules.write_bytes(b"# caf\xe9\nonly: [images_per_s]\n")
    said = {"fifo": "named pipe", "dev-zero": "character device", "bomb": "expands to more than 100000 values",
            "deep": "nested too deeply", "utf16": "is UTF-16 text", "latin1": "not UTF-8 text"}[kind]
    started = time.monotonic()
    out = _in_time(["compare", str(group), str(group), "--rules", str(rules)])
    assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert time.monotonic() - started < 30


def test_a_named_pipe_among_the_reports_is_skipped_or_refused(tmp_path, capsys):
    group = _group(tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    os.mkfifo(reports / "stale.meta.json")
    out = _in_time(["report", str(group), "--out", str(reports / "r.md"), "--no-plots"])
    assert out.returncode == 0, out.stderr[-2000:]  # an unreadable .meta.json is not listed, never waited on
    os.mkfifo(reports / ".harness-output.lock.tmp")
    (reports / ".harness-output.lock").unlink()
    os.rename(reports / ".harness-output.lock.tmp", reports / ".harness-output.lock")
    out = _in_time(["report", str(group), "--out", str(reports / "r.md"), "--no-plots"])
    assert out.returncode == 2 and "is not the lock file the harness keeps there" in out.stderr


def test_a_named_pipe_or_huge_file_as_a_grid_is_said(tmp_path, capsys):
    fifo = tmp_path / "g.yaml"
    os.mkfifo(fifo)
    out = _in_time(["plan", str(fifo)])
    assert out.returncode == 2 and "named pipe" in out.stderr and "no such grid file" not in out.stderr
    big = tmp_path / "big.yaml"
    big.write_text("name: g\ndescription: '" + "x" * (5 * 2**20) + "'\n")
    started = time.monotonic()
    assert main(["plan", str(big)]) == 2
    assert "larger than 4 MiB" in _err(capsys) and time.monotonic() - started < 10


# ------------------------------------------------------------------------------------- 4. tracebacks, 6. messages
def test_infinite_limits_and_out_of_range_seeds_are_refused_when_the_grid_is_read(tmp_path, capsys):
    from harness.grid.file import load_grid

    grid = tmp_path / "g.yaml"
    base = "name: g\nhardware: {gpu: cpu, gpus_per_node: 1}\ndefaults: {model: tiny, task: docvqa, strategy: lora}\n"
    for limits, said in (("{memory_gb: .inf}", "limits.memory_gb: Input should be a finite number"),
                         ("{timeout_s: .inf}", "limits.timeout_s: Input should be a finite number")):
        grid.write_text(base + f"limits: {limits}\n")
        assert main(["plan", str(grid)]) == 2
        assert said in _err(capsys)
    grid.write_text(base + "axes: {seed: [-1, 99999999999999999999, 7]}\n")
    cells = load_grid(grid).cells
    assert [c.status for c in cells] == ["invalid", "invalid", "planned"]
    assert "seed" in cells[0].reason and "greater than or equal to 0" in cells[0].reason
    assert "less than or equal to 4294967295" in cells[1].reason


def test_writing_a_default_out_keeps_the_cells_run_id():
    from training_core.spec import RunSpec

    plain = RunSpec(model="tiny")
    for field, default in (("recipe_revision", "current"), ("require_gradients", False),
                           ("longrope_generation", "official")):
        assert RunSpec(model="tiny", **{field: default}).run_id == plain.run_id, field
    assert RunSpec(model="tiny", recipe_revision="2024-06", strategy="full").run_id != \
        RunSpec(model="tiny", strategy="full").run_id  # a setting that changes the cell still changes its id
    assert plain.run_id == RunSpec(model="tiny").run_id


def test_a_nested_default_is_refused_not_left_literal(tmp_path, monkeypatch):
    from harness.grid.file import load_grid
    from harness.grid.schema import GridError

    monkeypatch.delenv("A", raising=False)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: cpu}\ndefaults: {model: tiny, data: '${A:-${B:-synthetic}}'}\n")
    with pytest.raises(GridError, match=r"a \$\{\.\.\.\} inside a default .* is not supported"):
        load_grid(grid)


def test_estimate_takes_a_gpus_device_name_and_refuses_an_empty_one(capsys):
    from training_core.estimate.fit import fit

    assert fit(2**30, 1, "H100 80GB HBM3").total == fit(2**30, 1, "H100").total is not None
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", "cpu_smoke", "--gpu", ""])
    assert exit_.value.code == 2 and "an empty value names nothing" in capsys.readouterr().err


def test_control_characters_from_files_never_reach_the_terminal_or_the_report(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text('name: g\ndescription: "clear \\e[2J title \\e]0;pwned\\a reversed \\u202e txt"\n'
                    "hardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, global_batch: 2}\n")
    assert main(["plan", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out
    assert main(["plan", str(grid), "--filter", "strategy=\x1b]0;pwned\x07"]) == 2
    err = _err(capsys)
    assert "\x1b" not in err and "\\x1b]0;pwned\\x07" in err
    group = _group(tmp_path)
    rows = [json.loads(line) for line in (group / "rows.jsonl").read_text().splitlines()]
    for row in rows:
        row["spec"]["reference"] = "<img src=x onerror=alert(1)>\u202e"
    (group / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(group), "--out", str(tmp_path / "r.md"), "--no-plots"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "<img" not in text and "\u202e" not in text and "&lt;img src=x" in text


def test_a_childs_failure_is_its_error_not_a_warning_printed_after_it():
    from harness.run.child import error_line

    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: the cell's spec is bad\n"
              "/venv/lib/transformers/utils.py:12: FutureWarning: something is deprecated\n  warnings.warn(\n")
    assert error_line(stderr) == "ValueError: the cell's spec is bad"
    assert error_line("just a line\n") == "just a line" and error_line("") == ""


def test_estimate_refuses_a_data_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["estimate", "cpu_smoke", "--data-root", str(tmp_path / "file")]) == 2
    err = _err(capsys)
    assert f"--data-root {tmp_path / 'file'}: not a directory" in err


def test_estimates_never_write_into_the_current_directory():
    import harness.cli.grids  # noqa: F401 - the parser's defaults
    from harness.cli import build_parser
    from harness.paths import ROOT

    args = build_parser().parse_args(["estimate", "cpu_smoke"])
    assert args.data_root.is_absolute() and args.data_root.is_relative_to(ROOT / "build")


def test_plots_show_a_bounded_number_of_cells_and_the_report_says_so(tmp_path):
    from harness.report.plots import MAX_PLOTTED
    from harness.report.render import render

    group = _group(tmp_path)
    row = json.loads((group / "rows.jsonl").read_text().splitlines()[0])
    many = [{**row, "run_id": f"{i:016x}", "cell": i} for i in range(MAX_PLOTTED + 12)]
    (group / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in many))
    text = render(group, tmp_path / "r.md", plots=True).read_text()
    assert f"The plots show the first {MAX_PLOTTED} of the {MAX_PLOTTED + 12} finished speed cells." in text
    assert (tmp_path / "r.assets" / "relative_throughput.png").is_file()


def test_data_commands_refuse_a_zero_limit_and_a_model_folder_without_a_tokenizer(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "convert", "hateful_memes", "--out", str(tmp_path / "hm"), "--limit", "0"])
    assert exit_.value.code == 2 and "0 must be a finite number above 0" in capsys.readouterr().err
    assert not (tmp_path / "hm").exists()  # no empty splits written, no exit 0
    assert main(["data", "synth", "docvqa", "--out", str(tmp_path / "twin"), "--n-train", "2", "--n-eval", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "validate", "docvqa", str(tmp_path / "twin"), "--split", "train", "--lengths",
                 "--model", "/etc"]) == 2
    assert "--model /etc: no tokenizer and processor to load there" in _err(capsys)


def test_the_comparisons_summary_lists_every_change_but_not_a_million_unchanged_metrics():
    from harness.gate.compare import UNCHANGED_LISTED, Finding, GateResult, render_markdown

    same = [Finding(f"{i:016x}", "docvqa lora", "images_per_s", 1.0, 1.0, "unchanged", "±5%")
            for i in range(UNCHANGED_LISTED + 100)]
    worse = [Finding(f"{i:016x}", "docvqa lora", "loss_last", 1.0, 2.0, "regression", "±5%") for i in range(700)]
    text = render_markdown(GateResult(findings=same + worse), Path("b"), Path("c"))
    assert "... and 100 more unchanged metric(s), not listed" in text
    assert text.count("| loss_last |") == 700 and text.count("| images_per_s |") == UNCHANGED_LISTED


def test_a_model_config_with_a_million_nested_layers_is_refused_everywhere_it_is_read(tmp_path, capsys):
    """Issue 31 (3): 10^6 layers in `img_processor.vision_config` of a `model: DIR` config (random weights) hung
    `estimate` and `plan --estimate` (2-3 GB and growing) and passed `run`'s preflight. One bounds check for every
    config read: an `error:` naming the file and the nested key, in seconds, nothing run."""
    import json
    import time

    from training_core.model.build import save_tiny_model_dir

    model = save_tiny_model_dir(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["img_processor"]["vision_config"]["num_hidden_layers"] = 10**6
    (model / "config.json").write_text(json.dumps(config))
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: g\ndefaults: {{model: {model}, weights: random, task: docvqa, strategy: lora, "
                    "precision: fp32, gpu: cpu, global_batch: 2, measured_steps: 1, warmup_steps: 0}\n")
    said = f"{model / 'config.json'}: img_processor.vision_config.num_hidden_layers 1000000 is outside 1 .. 1024"
    for argv in (["plan", str(grid), "--estimate"], ["estimate", str(grid), "--data-root", str(tmp_path / "d")],
                 ["run", str(grid), "--results", str(tmp_path / "results")]):
        started = time.monotonic()
        assert main(argv) == 2, argv
        assert said in _err(capsys), argv
        assert time.monotonic() - started < 30, argv
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("result.json"))


def test_the_estimators_twin_is_bounded_and_its_time_counts_against_the_cells_timeout(tmp_path, capsys, monkeypatch):
    """Issue 31 (3): `global_batch: 100000000` made `estimate` write a twin of 10^8 examples (140 MB after 90 s and
    growing): the estimator needs only the longest micro-batch, so its twin holds at most MAX_TWIN_TRAIN examples.
    `run --estimate --timeout 10` estimated for 140 s: the prediction now gets the cell's timeout, and a prediction
    that uses it all records the cell `timeout` without starting it."""
    import json
    import time

    from training_core import inputs

    MAX_TWIN_TRAIN = 16  # the bound, made small for the test's time (1024 examples take a minute here)
    monkeypatch.setattr(inputs, "MAX_TWIN_TRAIN", MAX_TWIN_TRAIN)

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, gpu: cpu, "
                    "global_batch: 100000000, measured_steps: 1, warmup_steps: 0}\n")
    started = time.monotonic()
    assert main(["estimate", str(grid), "--data-root", str(tmp_path / "twins"), "--json"]) == 0
    assert time.monotonic() - started < 120
    (entry,) = json.loads(capsys.readouterr().out)["cells"]
    assert entry["status"] == "estimated", entry
    assert f"a {MAX_TWIN_TRAIN}-example twin" in " ".join(entry["predicted"]["notes"])
    (train,) = (tmp_path / "twins").rglob("train.jsonl")
    assert len(train.read_text().splitlines()) == MAX_TWIN_TRAIN

    small = tmp_path / "small.yaml"
    small.write_text("name: small\ndefaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, gpu: cpu, "
                     "global_batch: 2, measured_steps: 1, warmup_steps: 0}\n")
    results = tmp_path / "results"
    assert main(["run", str(small), "--results", str(results), "--estimate", "--timeout", "1"]) == 1
    (row,) = [json.loads(line) for line in next(results.rglob("rows.jsonl")).read_text().splitlines()]
    assert row["status"] == "timeout" and "memory prediction alone ran past the cell's timeout of 1 s" in row["reason"]
    cell_dir = next(results.rglob("cells/*"))
    assert not (cell_dir / "result.json").exists() or json.loads((cell_dir / "result.json").read_text()) == row


def test_rows_read_from_a_store_share_their_keys_and_short_values(tmp_path):
    """Issue 31 (3, scale): 10^5 rows held one copy of every key and value each (compare: 3.6 GB); read rows now
    share them, so the memory grows with the numbers, not with the repeated names (measured: 1.8 GB)."""
    import json

    from harness.store import RowStore

    src = FIXTURE / "results" / "before_stages" / "cpu" / "rows.jsonl"
    row = json.loads(src.read_text().splitlines()[0])
    group = tmp_path / "g"
    group.mkdir()
    (group / "rows.jsonl").write_text("".join(json.dumps({**row, "run_id": f"{i:016x}", "cell": i}) + "\n"
                                              for i in range(3)))
    first, second, _ = RowStore(group).latest()[0]
    for a, b in ((first, second), (first["spec"], second["spec"])):
        assert all(x is y for x, y in zip(sorted(a), sorted(b), strict=True))
    assert first["spec"]["task"] is second["spec"]["task"] and first["run_id"] is not second["run_id"]
