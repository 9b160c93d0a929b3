"""The device a cell runs on: type, name, compute capability, and what it can do."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    type: str  # "cuda" or "cpu"
    index: int
    name: str
    capability: tuple[int, int] | None  # CUDA compute capability
    total_memory: int | None

    @property
    def torch(self) -> torch.device:
        return torch.device(self.type, self.index) if self.type == "cuda" else torch.device("cpu")

    def synchronize(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize(self.index)


def current_device(gpu: str = "auto") -> Device:
    """The device a cell of `gpu` (its spec's `gpu`) runs on: the CPU for `cpu` cells, whatever else the machine has;
    otherwise CUDA device `LOCAL_RANK` when CUDA is available, else the CPU (where such a cell is `unsupported`)."""
    if gpu.lower() != "cpu" and torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        props = torch.cuda.get_device_properties(index)
        return Device("cuda", index, props.name, (props.major, props.minor), props.total_memory)
    import platform

    return Device("cpu", 0, platform.processor() or platform.machine(), None, None)
