"""The torchrun command line of a cell, which every launcher runs: standalone on one node, or one node of a
multi-node static rendezvous (the guide's own form). SLURM's job scripts: harness/launchers/slurm.py."""

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
