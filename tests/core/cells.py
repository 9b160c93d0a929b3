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


def run_cell(out: Path, nproc: int = 1, extra_args: tuple[str, ...] = (), timeout: int = 600, **fields) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec_fields = {**TINY, "gpus_per_node": nproc, "global_batch": 2 * nproc, **fields}
    RunSpec(**spec_fields).save(out / "spec.json")
    return run_spec_file(out / "spec.json", out, nproc, extra_args, timeout)


def run_spec_file(spec_path: Path, out: Path, nproc: int = 1, extra_args=(), timeout: int = 600) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "training_core.run", "--spec", str(spec_path), "--out", str(out), *extra_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    result_file = out / "result.json"
    assert result_file.exists(), f"no result.json (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(result_file.read_text())
    result["_returncode"] = proc.returncode
    result["_stderr"] = proc.stderr
    return result
