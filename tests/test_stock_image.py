"""The core on a stock CUDA image: with only torch, transformers, peft, accelerate, pydantic, pyyaml, numpy, pillow,
safetensors and tokenizers (every optional package hidden), the packages import, `harness plan` and `doctor`
work, and a grid runs: cells whose strategy needs a missing package end `unsupported` with what to install, the
others run."""

import json
import subprocess
import sys

import pytest

from harness.store import RowStore
from tests.blocking import OPTIONAL, ROOT, env_without

# Modules that exist to use one optional package (imported only by the command that needs it).
NEEDS = {"harness.report.plots": "matplotlib"}

IMPORT_ALL = """
import importlib, pkgutil, sys
import harness, training_core
needs = {needs!r}
failed = []
for package in (harness, training_core):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name in needs or info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{{info.name}}: {{type(exc).__name__}}: {{exc}}")
for name, module in needs.items():
    try:
        importlib.import_module(name)
        failed.append(f"{{name}} imported although {{module}} is hidden")
    except ImportError:
        pass
print("\\n".join(failed) or "all imported")
sys.exit(1 if failed else 0)
"""


def _python(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_every_module_imports_without_the_optional_packages(tmp_path):
    out = _python(env_without(tmp_path, OPTIONAL), "-c", IMPORT_ALL.format(needs=NEEDS))
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    plan = _python(env_without(tmp_path, OPTIONAL), "-m", "harness", "plan", "a100_speed", "--json")
    assert plan.returncode == 0 and len(json.loads(plan.stdout)) == 10, plan.stderr[-2000:]


@pytest.mark.slow
def test_cells_needing_a_missing_package_end_unsupported_and_the_others_run(tmp_path):
    grid = tmp_path / "stock.yaml"
    grid.write_text("""name: stock
hardware: {gpu: cpu, gpus_per_node: 1}
defaults: {model: tiny, task: docvqa, precision: fp32, attention: sdpa, lora_rank: 4, global_batch: 2,
           num_crops: 4, warmup_steps: 1, measured_steps: 1}
axes: {strategy: [full, qlora, lora]}
""")
    out = _python(env_without(tmp_path, OPTIONAL), "-m", "harness", "run", str(grid), "--results",
                  str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["spec"]["strategy"]: r for r in RowStore(tmp_path / "r" / "stock" / "cpu").rows()}
    assert rows["full"]["status"] == "unsupported" and "install it: pip install deepspeed" in rows["full"]["reason"]
    assert rows["qlora"]["status"] == "unsupported" and "pip install bitsandbytes" in rows["qlora"]["reason"]
    assert rows["lora"]["status"] == "ok" and rows["lora"]["metrics"]["images_per_s"] > 0
    assert "Traceback" not in (tmp_path / "r" / "stock" / "cpu" / "cells" / rows["full"]["run_id"] /
                               "log.txt").read_text()
