"""What this machine has, through NVML (pynvml), checked against a grid's hardware profile."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    gpu_names: tuple[str, ...]

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_names)

    @property
    def label(self) -> str:
        if not self.gpu_names:
            return "cpu"
        short = self.gpu_names[0].replace("NVIDIA ", "").split()[0]
        return f"{self.gpu_count}x{short}"


def detect() -> Machine:
    try:
        import pynvml

        pynvml.nvmlInit()
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return Machine(tuple(names))
    except Exception:  # no driver / no NVML: no GPUs
        return Machine(())


def mismatch(machine: Machine, gpu: str, gpus_per_node: int) -> str | None:
    """Why this machine does not match a grid's profile, or None."""
    if gpu.lower() == "cpu":
        return None
    if machine.gpu_count == 0:
        return f"the grid is for {gpus_per_node}x{gpu} per node but this machine has no NVIDIA GPU"
    if machine.gpu_count < gpus_per_node:
        return f"the grid needs {gpus_per_node} GPUs per node, this machine has {machine.gpu_count}"
    wrong = [n for n in machine.gpu_names if gpu.upper() not in n.upper()]
    if wrong:
        return f"the grid is for {gpu} GPUs, this machine has {', '.join(sorted(set(machine.gpu_names)))}"
    return None
