"""Peak memory: torch's allocator peaks (CUDA), the device's own view through NVML (sampled), and the process RSS
(sampled). Peaks are reset when the measurement window starts, so they cover the measured steps. A key that cannot
be measured on this device is absent, never zero."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil
import torch

from training_core.devices import Device


class _Sampler(threading.Thread):
    def __init__(self, read: Callable[[], int], interval: float):
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.peak = read()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, self.read())

    def reset(self) -> None:
        self.peak = self.read()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.sample()


def _nvml_reader(device: Device) -> Callable[[], int] | None:
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # NVML missing or not permitted: the key stays absent
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


class MemoryTracker:
    def __init__(self, device: Device, interval: float = 0.01):
        self.device = device
        process = psutil.Process()
        self._samplers = {"peak_rss_bytes": _Sampler(lambda: process.memory_info().rss, interval)}
        nvml = _nvml_reader(device)
        if nvml is not None:
            self._samplers["peak_mem_device_bytes"] = _Sampler(nvml, max(interval, 0.05))

    def __enter__(self) -> MemoryTracker:
        for sampler in self._samplers.values():
            sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        for sampler in self._samplers.values():
            sampler.stop()

    def start_window(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device.index)
        for sampler in self._samplers.values():
            sampler.reset()

    def metrics(self, max_all: Callable = float) -> dict:
        out = {}
        if self.device.type == "cuda":
            out["peak_mem_allocated_bytes"] = int(max_all(torch.cuda.max_memory_allocated(self.device.index)))
            out["peak_mem_reserved_bytes"] = int(max_all(torch.cuda.max_memory_reserved(self.device.index)))
        for key, sampler in self._samplers.items():
            sampler.sample()
            out[key] = int(max_all(sampler.peak))
        return out


def _optimizer_tensors(optimizer, seen: set[int]) -> int:
    """Bytes of an optimiser's state tensors, looking through wrappers (DeepSpeed's ZeRO optimiser keeps the torch
    optimiser in `.optimizer` and the fp32 master partitions in `single_partition_of_fp32_groups`)."""
    total = 0
    if optimizer is None or id(optimizer) in seen:
        return 0
    seen.add(id(optimizer))
    for state in getattr(optimizer, "state", {}).values():
        if isinstance(state, dict):
            total += sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    for tensor in getattr(optimizer, "single_partition_of_fp32_groups", []) or []:
        total += tensor.numel() * tensor.element_size()
    return total + _optimizer_tensors(getattr(optimizer, "optimizer", None), seen)


def model_state_bytes(module: torch.nn.Module, optimizer) -> int:
    """Parameters (as stored: 4-bit weights count their bytes) plus optimiser state, on this rank: a deterministic
    memory measure whose order across strategies holds on any machine."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return params + _optimizer_tensors(optimizer, set())
