"""Launch commands for a cell: torchrun on this node (standalone, or one node of a multi-node static rendezvous,
the guide's own form), or an sbatch script (srun + torchrun, c10d rendezvous on the job's first node)."""

from __future__ import annotations

import math
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


def slurm_time(timeout_s: float) -> str:
    """`--time` for a timeout: whole seconds rounded up, at least 1 (`00:00:00` would mean no limit to SLURM, which
    itself counts in minutes and rounds up)."""
    total = max(1, math.ceil(timeout_s))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


# The rendezvous port of a job: from its id, so that jobs whose first node is the same never meet in one c10d store.
JOB_PORT = "$(( 20000 + SLURM_JOB_ID % 20000 ))"


def sbatch_script(spec: RunSpec, spec_path: Path, out_dir: Path, *, job_name: str, timeout_s: float,
                  workdir: Path, extra: list[str] = (), python: str = sys.executable, port: int | None = None,
                  check_hardware: bool = True, keep_model: bool = False, exclusive: bool = True,
                  memory_gb: float | None = None) -> str:
    """One job per cell on `spec.nodes` nodes, asking SLURM for what the cell uses: GPUs only for GPU cells, its
    nodes to itself (`exclusive`, so nothing else runs beside a measurement; else the CPUs its ranks need),
    `memory_gb` as `--mem`, and every CPU of each node for that node's torchrun and its loader workers. With
    `check_hardware`, every node first checks its GPUs against the cell's (`python -m harness.hardware check`): a
    mismatch ends the job with the reason in result.json, as does a head node whose name does not resolve on a
    node. `port`: the rendezvous port (default: from the job id)."""
    directives = [f"--job-name={job_name}", f"--nodes={spec.nodes}", "--ntasks-per-node=1"]
    if spec.gpu.lower() != "cpu":
        directives.append(f"--gpus-per-node={spec.gpus_per_node}")
    if exclusive:
        directives.append("--exclusive")
    else:  # a rank and the recipe's 4 loader workers on a GPU; one CPU per rank (or its threads) on a CPU
        per_rank = 5 if spec.gpu.lower() != "cpu" else (spec.cpu_threads or 1)
        directives.append(f"--cpus-per-task={spec.gpus_per_node * per_rank}")
    if memory_gb:
        directives.append(f"--mem={math.ceil(memory_gb * 1024)}M")
    directives += [f"--time={slurm_time(timeout_s)}", f"--output={out_dir}/slurm-%j.log", *extra]
    torchrun = [python, "-m", "torch.distributed.run", "--nnodes=$SLURM_NNODES",
                f"--nproc_per_node={spec.gpus_per_node}", "--rdzv_id=$SLURM_JOB_ID", "--rdzv_backend=c10d",
                '--rdzv_endpoint="$head_node:$rdzv_port"', "-m", "training_core.run",
                "--spec", shlex.quote(str(spec_path)), "--out", shlex.quote(str(out_dir))]
    if keep_model:
        torchrun.append("--save-model")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
             f"cd {shlex.quote(str(workdir))}",
             'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             f"rdzv_port={port if port is not None else JOB_PORT}"]
    if spec.cpu_threads is not None:  # as the local launcher sets them, for libraries that size pools at import
        lines.append(f"export OMP_NUM_THREADS={spec.cpu_threads} MKL_NUM_THREADS={spec.cpu_threads}")
    step = "srun --ntasks-per-node=1 --cpus-per-task=$SLURM_CPUS_ON_NODE "  # the node's CPUs, not one
    # every node first checks that the head node's name resolves there and, with `check_hardware`, its GPUs
    gpus = [shlex.quote(f"--gpu={spec.gpu}"), f"--gpus-per-node={spec.gpus_per_node}"] if check_hardware else []
    check = [python, "-m", "harness.hardware", "check", '--head-node="$head_node"', *gpus,
             "--spec", shlex.quote(str(spec_path)), "--out", shlex.quote(str(out_dir))]
    lines.append(step + " ".join(check))
    lines += [step + " ".join(torchrun), ""]
    return "\n".join(lines)
