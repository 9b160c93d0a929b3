"""What this machine has, through NVML (pynvml), checked against a grid's hardware profile.

Also the in-job check of a SLURM cell: `python -m harness.hardware check --gpu A100 --gpus-per-node 8 --spec S
--out DIR` runs on each compute node before the cell starts; on a mismatch it writes the cell's `result.json`
(status `error`, the reason naming the node) and exits 1, so the runner that collects the job records why."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from training_core.nvml import visible_names

AUTO = "auto"  # a grid's `gpu: auto`: the GPUs of the machine it runs on


def short_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'Tesla V100-SXM2-32GB' -> 'V100', 'NVIDIA A100-SXM4-80GB' -> 'A100'."""
    word = name.replace("NVIDIA ", "").replace("Tesla ", "").split()[0]
    return word.split("-")[0]


@dataclass(frozen=True)
class Machine:
    gpu_names: tuple[str, ...]

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_names)

    @property
    def gpu(self) -> str:
        return short_name(self.gpu_names[0]) if self.gpu_names else "cpu"


def detect() -> Machine:
    """The GPUs this process would use (CUDA_VISIBLE_DEVICES honoured), by NVML name."""
    return Machine(tuple(visible_names()))


def group_label(machine: Machine, gpu: str, gpus_per_node: int) -> str:
    """The results group of a grid run on this machine: the GPUs its cells use per node ('2xA100' for 2-GPU cells on
    an 8-GPU box), not every GPU the machine has; 'cpu' for CPU grids and machines without GPUs."""
    if gpu.lower() == "cpu" or not machine.gpu_count:
        return "cpu"
    return f"{min(gpus_per_node, machine.gpu_count)}x{machine.gpu}"


def mismatch(machine: Machine, gpu: str, gpus_per_node: int) -> str | None:
    """Why this machine does not match a grid's profile, or None."""
    if gpu.lower() == "cpu":
        return None
    if machine.gpu_count == 0:
        wanted = "this machine's GPUs" if gpu == AUTO else f"{gpus_per_node}x{gpu} per node"
        return f"the grid is for {wanted} but this machine has no NVIDIA GPU"
    if machine.gpu_count < gpus_per_node:
        return f"the grid needs {gpus_per_node} GPUs per node, this machine has {machine.gpu_count}"
    wrong = [n for n in machine.gpu_names if gpu != AUTO and gpu.upper() not in n.upper()]
    if wrong:
        return f"the grid is for {gpu} GPUs, this machine has {', '.join(sorted(set(machine.gpu_names)))}"
    return None


# ------------------------------------------------------------------------------------------------ in a SLURM job
def head_node_problem(name: str) -> str | None:
    """Why this node cannot reach the job's first node by name (torchrun's rendezvous endpoint), or None."""
    try:
        socket.getaddrinfo(name, None)
    except OSError as exc:
        return (f"the job's head node name {name!r} does not resolve on compute node {socket.gethostname()} "
                f"({exc.strerror or exc}); torchrun's rendezvous needs it: fix the nodes' DNS or /etc/hosts")
    return None


def check_in_job(args) -> int:
    """On each compute node before torchrun: the head node's name resolves here, and (with --gpu) the GPUs match."""
    problem = head_node_problem(args.head_node) if args.head_node else None
    if problem is None and args.gpu is not None:
        mismatched = mismatch(detect(), args.gpu, args.gpus_per_node)
        if mismatched is not None:
            problem = (f"hardware mismatch on compute node {socket.gethostname()}: {mismatched}; submit to a "
                       "partition with these GPUs (--sbatch-arg=--partition=...) and rerun with --force, or pass "
                       "--allow-hardware-mismatch")
    if problem is None:
        return 0
    from training_core.env import capture
    from training_core.result import RESULT_FILE, Outcome, build_row, write_json_atomic
    from training_core.spec import RunSpec

    spec = RunSpec.load(args.spec)
    row = build_row(run_id=spec.run_id, spec=spec.model_dump(mode="json"), outcome=Outcome(status="error",
                    reason=problem), env=capture(spec.world_size), process_start=time.time())
    write_json_atomic(Path(args.out) / RESULT_FILE, row)
    print(f"error: {problem}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.hardware")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check this node against a cell's hardware (inside a SLURM job)")
    check.add_argument("--gpu", help="the cell's GPU type (no GPU check without it)")
    check.add_argument("--gpus-per-node", type=int, default=1)
    check.add_argument("--head-node", help="the job's first node: its name must resolve here")
    check.add_argument("--spec", required=True, type=Path)
    check.add_argument("--out", required=True, type=Path, help="the cell directory (result.json on a mismatch)")
    args = parser.parse_args(argv)
    return check_in_job(args)


if __name__ == "__main__":
    raise SystemExit(main())
