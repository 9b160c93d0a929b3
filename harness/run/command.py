"""Every command line a cell runs, in one place: torchrun on one node (standalone), one node of a multi-node static
rendezvous (the guide's own form), or inside a SLURM job (a c10d rendezvous on the job's first node); and the
in-job node check every SLURM node runs first. The launchers and `plan` print and run exactly these."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from training_core.spec import RunSpec

from .options import Nodes

CELL_MODULE = "training_core.run"  # the cell's entry point, inside every rank
NODE_CHECK_MODULE = "harness.run.launchers.slurm_node"  # the in-job check (the old path still works: a shim)


def torchrun(spec: RunSpec, spec_path: Path | str, out_dir: Path | str, rendezvous: list[str], *,
             python: str = sys.executable, keep_model: bool = False) -> list[str]:
    """`python -m torch.distributed.run <rendezvous> --nproc_per_node=N -m training_core.run --spec S --out DIR`."""
    cmd = [python, "-m", "torch.distributed.run", *rendezvous, f"--nproc_per_node={spec.gpus_per_node}",
           "-m", CELL_MODULE, "--spec", str(spec_path), "--out", str(out_dir)]
    return cmd + (["--save-model"] if keep_model else [])


def torchrun_command(spec: RunSpec, spec_path: Path, out_dir: Path, nodes: Nodes | None = None,
                     python: str = sys.executable, keep_model: bool = False) -> list[str]:
    """The local launcher's command: standalone on one node, else a static rendezvous at `nodes.master_addr`."""
    nodes = nodes or Nodes()
    if nodes.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [f"--nnodes={nodes.nnodes}", f"--node_rank={nodes.node_rank}",
                      f"--master_addr={nodes.master_addr}", f"--master_port={nodes.master_port}"]
    return torchrun(spec, spec_path, out_dir, rendezvous, python=python, keep_model=keep_model)


# Inside a SLURM job script: shell variables the script sets ($head_node, $rdzv_port) and SLURM's own.
SLURM_RENDEZVOUS = ["--nnodes=$SLURM_NNODES", "--rdzv_id=$SLURM_JOB_ID", "--rdzv_backend=c10d",
                    '--rdzv_endpoint="$head_node:$rdzv_port"']


def slurm_torchrun_line(spec: RunSpec, spec_path: Path, out_dir: Path, python: str, keep_model: bool) -> str:
    """The job script's torchrun line (a c10d rendezvous on the job's first node), quoted for the script."""
    cmd = torchrun(spec, shlex.quote(str(spec_path)), shlex.quote(str(out_dir)), SLURM_RENDEZVOUS,
                   python=shlex.quote(python), keep_model=keep_model)
    return " ".join(cmd)


def node_check_line(spec: RunSpec, spec_path: Path, out_dir: Path, python: str, check_hardware: bool) -> str:
    """The job script's node check: the head node's name resolves on this node and (check_hardware) its GPUs match."""
    gpus = [shlex.quote(f"--gpu={spec.gpu}"), f"--gpus-per-node={spec.gpus_per_node}"] if check_hardware else []
    return " ".join([shlex.quote(python), "-m", NODE_CHECK_MODULE, "check", '--head-node="$head_node"', *gpus,
                     "--spec", shlex.quote(str(spec_path)), "--out", shlex.quote(str(out_dir))])


_SAFE = re.compile(r"^[-\w=./:$@%+,]+$")


def shell(cmd: list[str]) -> str:
    """A command line to paste into a shell; `$VARS` stay unquoted so that the shell expands them."""
    return " ".join(token if _SAFE.match(token) else shlex.quote(token) for token in cmd)
