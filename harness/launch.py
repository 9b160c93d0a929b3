"""Launch commands for a cell: torchrun on this node (standalone, or one node of a multi-node static rendezvous,
the guide's own form), or an sbatch script (srun + torchrun, c10d rendezvous on the job's first node)."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from training_core.spec import RunSpec


@dataclass(frozen=True)
class Nodes:
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500


def torchrun_command(spec: RunSpec, spec_path: Path, out_dir: Path, nodes: Nodes | None = None,
                     python: str = sys.executable, keep_model: bool = False) -> list[str]:
    nodes = nodes or Nodes()
    cmd = [python, "-m", "torch.distributed.run"]
    if nodes.nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--nnodes={nodes.nnodes}", f"--node_rank={nodes.node_rank}",
                f"--master_addr={nodes.master_addr}", f"--master_port={nodes.master_port}"]
    cmd += [f"--nproc_per_node={spec.gpus_per_node}", "-m", "training_core.run", "--spec", str(spec_path),
            "--out", str(out_dir)]
    return cmd + (["--save-model"] if keep_model else [])


_SAFE = re.compile(r"^[-\w=./:$@%+,]+$")


def shell(cmd: list[str]) -> str:
    """A command line to paste into a shell; `$VARS` stay unquoted so that the shell expands them."""
    return " ".join(token if _SAFE.match(token) else shlex.quote(token) for token in cmd)


def sbatch_script(spec: RunSpec, spec_path: Path, out_dir: Path, *, job_name: str, timeout_s: float,
                  workdir: Path, extra: list[str] = (), python: str = sys.executable, port: int = 29500,
                  check_hardware: bool = True, keep_model: bool = False) -> str:
    """One job per cell on `spec.nodes` nodes. With `check_hardware`, every node first checks its GPUs against
    the cell's (`python -m harness.hardware check`): a mismatch ends the job with the reason in result.json."""
    hours, rest = divmod(int(timeout_s), 3600)
    minutes, seconds = divmod(rest, 60)
    directives = [
        f"--job-name={job_name}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={spec.gpus_per_node}",
        f"--time={hours:02d}:{minutes:02d}:{seconds:02d}",
        f"--output={out_dir}/slurm-%j.log",
        *extra,
    ]
    torchrun = [python, "-m", "torch.distributed.run", "--nnodes=$SLURM_NNODES",
                f"--nproc_per_node={spec.gpus_per_node}", "--rdzv_id=$SLURM_JOB_ID", "--rdzv_backend=c10d",
                f'--rdzv_endpoint="$head_node:{port}"', "-m", "training_core.run",
                "--spec", shlex.quote(str(spec_path)), "--out", shlex.quote(str(out_dir))]
    if keep_model:
        torchrun.append("--save-model")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
             f"cd {shlex.quote(str(workdir))}",
             'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)']
    if check_hardware:
        check = [python, "-m", "harness.hardware", "check", f"--gpu={spec.gpu}",
                 f"--gpus-per-node={spec.gpus_per_node}", "--spec", shlex.quote(str(spec_path)),
                 "--out", shlex.quote(str(out_dir))]
        lines.append("srun --ntasks-per-node=1 " + " ".join(check))
    lines += ["srun " + " ".join(torchrun), ""]
    return "\n".join(lines)
