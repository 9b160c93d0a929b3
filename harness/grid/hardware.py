"""What this machine has, through NVML (pynvml), checked against a grid's hardware profile (here, and on each
compute node of a SLURM job: harness/run/launchers/slurm_node.py). GPUs are named by the catalogue's short names
(training_core/gpus.py)."""

from __future__ import annotations

from dataclasses import dataclass

from training_core.gpus import short_name
from training_core.nvml import visible_names

AUTO = "auto"  # a grid's `gpu: auto`: the GPUs of the machine it runs on


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
    # by the catalogue's short names: an A10 grid is not run on A100s, a RTX8000 grid runs on 'Quadro RTX 8000'
    wrong = [n for n in machine.gpu_names if gpu != AUTO and short_name(n).upper() != short_name(gpu).upper()]
    if wrong:
        return f"the grid is for {gpu} GPUs, this machine has {', '.join(sorted(set(machine.gpu_names)))}"
    return None
