"""Run one training_core cell in a subprocess (torchrun when nproc > 1), as the matrix runner will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from training_core.spec import RunSpec

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(task="docvqa", model="tiny", attention="sdpa", lora_rank=4, warmup_steps=2, measured_steps=3)


def run_cell(out: Path, nproc: int = 1, extra_args: tuple[str, ...] = (), timeout: int = 600, env=None,
             **fields) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec_fields = {**TINY, "gpus_per_node": nproc, "global_batch": 2 * nproc, **fields}
    RunSpec(**spec_fields).save(out / "spec.json")
    return run_spec_file(out / "spec.json", out, nproc, extra_args, timeout, env)


def run_spec_file(spec_path: Path, out: Path, nproc: int = 1, extra_args=(), timeout: int = 600, env=None) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "training_core.run", "--spec", str(spec_path), "--out", str(out), *extra_args]
    env = env or {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    result_file = out / "result.json"
    assert result_file.exists(), f"no result.json (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(result_file.read_text())
    result["_returncode"] = proc.returncode
    result["_stderr"] = proc.stderr
    return result


# A sitecustomize that makes torch report a CUDA GPU to the cell's device choice (`training_core.devices`; the device
# boundary: torch.cuda's queries) and logs each such question; the libraries still see this machine as it is (they
# would try kernels that are not there). A cell that then touched CUDA would fail: no GPU is there.
FAKE_CUDA = """import sys
import torch
_real = torch.cuda.is_available
def is_available():
    caller = sys._getframe(1).f_globals.get("__name__")
    if caller == "training_core.devices":
        with open({log!r}, "a") as log:
            log.write(caller + "\\n")
        return True
    return _real()
torch.cuda.is_available = is_available
"""


def env_with_fake_cuda(directory: Path) -> tuple[dict[str, str], Path]:
    """(the environment, the log of the device questions answered 'a GPU is here')."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "asked.log"
    (directory / "sitecustomize.py").write_text(FAKE_CUDA.format(log=str(log)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return env, log
