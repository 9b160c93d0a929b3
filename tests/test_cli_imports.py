"""The CLI loads what a command needs and nothing before it: `--help`, `plan`, `report`, `compare`, `baseline` and
the data commands never import the ML stack (torch, transformers, peft, deepspeed, ...), and `run` imports it only in
the cell processes it starts. Each command runs in a fresh interpreter (tests/import_probe.py) that records every
module it loaded: a deterministic check, not a timing (`make bench-cli` measures the times)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE_GROUP = ROOT / "results" / "baselines" / "regress_cpu" / "tiny-cpux1"  # committed rows of a real run

# The ML stack: no command but the cells (and doctor, export) may load any of these.
HEAVY = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "accelerate", "flash_attn", "tokenizers",
         "safetensors", "datasets")
# What belongs to one command, by package: another command loading any module of it is loading something before it is
# needed. The stages are packages (harness/grid, run, report, gate), so a module added to one is covered at once.
REPORTING = ("harness.report", "matplotlib", "jinja2")
GRIDS = ("harness.grid", "harness.run", "harness.plan")
COMPARING = ("harness.gate",)
DOCTOR = ("harness.doctor", "training_core.probes")
# Results as data and the trackers: pandas, pyarrow, mlflow and tensorboard load only in `results`, `track`, `run
# --track` and a report that has repeats to aggregate.
TRACKING = ("harness.track", "harness.results", "mlflow", "tensorboard")  # pandas brings pyarrow when it is there
TABLES = TRACKING + ("pandas", "pyarrow")
# What the parser itself may load of those: the stages' package docstrings, the cell limit it states in --help, the
# launchers' names, and the base class of user errors that main() catches.
LIGHT = ("harness.grid", "harness.grid.limits", "harness.run", "harness.run.launchers", "training_core",
         "training_core.errors")

# command -> (its arguments, given the test's temporary directory; the modules it must not load)
COMMANDS = {
    "help": (lambda t: ["--help"], HEAVY + REPORTING + GRIDS + COMPARING + DOCTOR + TABLES
             + ("training_core", "pydantic")),
    "run --help": (lambda t: ["run", "--help"], HEAVY + REPORTING + GRIDS + COMPARING + DOCTOR + TABLES
                   + ("training_core",)),
    "plan": (lambda t: ["plan", "a100_speed"], HEAVY + REPORTING + COMPARING + DOCTOR + TABLES),
    "plan --json": (lambda t: ["plan", "cpu_smoke", "--json"], HEAVY + REPORTING + COMPARING + DOCTOR + TABLES),
    "report": (lambda t: ["report", str(BASELINE_GROUP), "--out", str(t / "reports" / "r.md")],
               HEAVY + GRIDS + COMPARING + DOCTOR + TRACKING),
    "results": (lambda t: ["results", str(BASELINE_GROUP), "--out", str(t / "rows.csv")],
                HEAVY + GRIDS + COMPARING + DOCTOR + ("harness.track", "mlflow", "tensorboard")),
    "cost": (lambda t: ["cost", "--out", str(t / "reports" / "cost.md")],
             HEAVY + GRIDS + COMPARING + DOCTOR + TABLES),
    "compare": (lambda t: ["compare", str(ROOT / "results" / "baselines"), str(BASELINE_GROUP), "--rules",
                           str(ROOT / "results" / "baselines" / "ci_rules.yaml")],
                HEAVY + REPORTING + GRIDS + DOCTOR + TABLES),
    "baseline": (lambda t: ["baseline", str(BASELINE_GROUP), "--root", str(t / "baselines")],
                 HEAVY + REPORTING + GRIDS + DOCTOR + TABLES),
    "data synth": (lambda t: ["data", "synth", "ucf101", "--out", str(t / "twin"), "--n-train", "3", "--n-eval", "2"],
                   HEAVY + REPORTING + GRIDS + COMPARING + DOCTOR + TABLES),
    "data validate": (lambda t: ["data", "validate", "ucf101", str(_twin(t / "twin"))],
                      HEAVY + REPORTING + GRIDS + COMPARING + DOCTOR + TABLES),
    "run --dry-run": (lambda t: ["run", "cpu_smoke", "--dry-run", "--results", str(t / "runs")],
                      HEAVY + REPORTING + COMPARING + DOCTOR + TABLES),
}


def _twin(directory: Path) -> Path:
    """A small UCF-101 twin to validate (written here, in the test process, which may import anything)."""
    from training_core.data.synth import synthesize

    synthesize("ucf101", directory, n_train=3, n_eval=2, seed=0)
    return directory


def loaded(tmp_path: Path, args: list[str], pythonpath: str = str(ROOT)) -> tuple[int, list[str]]:
    """(exit code, every module the command loaded) of `python -m harness ARGS` in a fresh interpreter."""
    return probe(tmp_path, args, pythonpath)[:2]


def probe(tmp_path: Path, args: list[str], pythonpath: str = str(ROOT)) -> tuple[int, list[str], str]:
    """(exit code, every module loaded, the file the `harness` package came from)."""
    out = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.import_probe", str(out), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert out.exists(), f"the probe wrote nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    record = json.loads(out.read_text())
    return record["exit"], record["modules"], record["harness"]


def violations(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    """The loaded modules that are, or are inside, a banned package or module (but for the parser's LIGHT ones)."""
    return sorted(m for m in modules if m not in LIGHT and any(m == b or m.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_light_command_loads_nothing_it_does_not_need(tmp_path, command):
    make_args, banned = COMMANDS[command]
    args = make_args(tmp_path)
    code, modules = loaded(tmp_path, args)
    assert code == 0, f"python -m harness {' '.join(args)} exited {code}"
    assert "harness.cli" in modules  # the probe did run the CLI
    assert violations(modules, banned) == [], f"{command} loaded what it does not need"


def test_the_check_fails_when_the_cli_imports_the_report_at_module_level_again(tmp_path):
    """The same check on a copy of the harness whose cli/__init__.py imports harness.report at the top, as it once did:
    `--help` and `plan` are caught loading the report and, through it, what the report needs."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "harness", copy / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "matrices", copy / "matrices")  # shipped grids are found beside the harness package
    cli = copy / "harness" / "cli" / "__init__.py"
    text = cli.read_text()
    anchor = "import sys\n"
    assert anchor in text
    cli.write_text(text.replace(anchor, anchor + "\nimport harness.report  # noqa: F401,E402\n", 1))
    pythonpath = os.pathsep.join([str(copy), str(ROOT)])  # the copied harness first, training_core from the tree
    for command in ("help", "plan"):
        make_args, banned = COMMANDS[command]
        code, modules, harness_file = probe(tmp_path, make_args(tmp_path), pythonpath)
        assert code == 0 and Path(harness_file).is_relative_to(copy)  # the planted copy ran, not the tree
        assert "harness.report" in violations(modules, banned), f"{command}: the planted import went unnoticed"


@pytest.mark.slow
def test_run_imports_the_ml_stack_only_in_its_cell_processes(tmp_path):
    """A real one-cell run: the cell trains (its row records the torch it imported) while the runner process
    itself never imports torch, transformers, peft or deepspeed."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, lora_rank: 4, "
                    "global_batch: 2, warmup_steps: 1, measured_steps: 1, num_crops: 4}\n")
    code, modules = loaded(tmp_path, ["run", str(grid), "--results", str(tmp_path / "r")])
    assert code == 0
    (row,) = [json.loads(line) for line in (tmp_path / "r" / "g" / "cpu" / "rows.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["env"]["torch"]
    env = json.loads((tmp_path / "r" / "g" / "cpu" / "env.json").read_text())
    assert env["torch"] == row["env"]["torch"] and "capture_error" not in env  # captured in a child, in full
    assert violations(modules, HEAVY + REPORTING + COMPARING + DOCTOR) == []
