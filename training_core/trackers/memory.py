"""Peak memory: torch's allocator peaks (CUDA), the device's own view through NVML (sampled), and the process RSS
(sampled). Peaks are reset when the measurement window starts, so they cover the measured steps. A key that cannot
be measured on this device is absent, never zero."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil
import torch

from training_core.devices import Device
from training_core.nvml import handle_for


class _Sampler(threading.Thread):
    """Polls `read` and keeps the peak. Sampling and a reset hold one lock: a sample taken across a reset would
    otherwise write the old (warm-up) peak back into the measured window."""

    def __init__(self, read: Callable[[], int], interval: float):
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self._lock = threading.Lock()
        self.peak = read()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            self.peak = max(self.peak, self.read())

    def reset(self) -> None:
        with self._lock:
            self.peak = self.read()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.sample()


def _nvml_reader(device: Device) -> Callable[[], int] | None:
    if device.type != "cuda":
        return None
    try:
        pynvml, handle = handle_for(device.index)  # NVML's own numbering: CUDA_VISIBLE_DEVICES mapped
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # NVML missing or not permitted: the key stays absent
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


SAMPLED = ("peak_rss_bytes", "peak_mem_device_bytes")  # the sampled keys, in the order ranks reduce them


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

    def metrics(self, max_all: Callable = float, min_all: Callable = float) -> dict:
        """Peaks over ranks. Every rank takes part in the same collectives in the same order: whether a sampled key
        is reported is agreed first (a key some rank cannot measure is absent for all), so ranks whose NVML differs
        never wait on each other."""
        out = {}
        if self.device.type == "cuda":
            out["peak_mem_allocated_bytes"] = int(max_all(torch.cuda.max_memory_allocated(self.device.index)))
            out["peak_mem_reserved_bytes"] = int(max_all(torch.cuda.max_memory_reserved(self.device.index)))
        for key in SAMPLED:
            sampler = self._samplers.get(key)
            if not min_all(1.0 if sampler is not None else 0.0):
                continue
            sampler.sample()
            out[key] = int(max_all(sampler.peak))
        return out


def _optimizer_tensors(optimizer, seen: set[int]):
    """An optimiser's state tensors, looking through wrappers (DeepSpeed's ZeRO optimiser keeps the torch optimiser
    in `.optimizer`, whose `state` its own `state` also shows, and the fp32 master partitions in
    `single_partition_of_fp32_groups`). The same tensor may come more than once; `_bytes` counts it once."""
    if optimizer is None or id(optimizer) in seen:
        return
    seen.add(id(optimizer))
    for state in getattr(optimizer, "state", {}).values():
        if isinstance(state, dict):
            yield from (t for t in state.values() if isinstance(t, torch.Tensor))
    yield from getattr(optimizer, "single_partition_of_fp32_groups", []) or []  # ZeRO-1/2's fp32 master
    yield from getattr(optimizer, "fp32_partitioned_groups_flat", []) or []  # ZeRO-3's
    yield from _optimizer_tensors(getattr(optimizer, "optimizer", None), seen)


def held(tensor: torch.Tensor) -> list[torch.Tensor]:
    """What this rank holds of a tensor: a DTensor's local shard (FSDP2); a ZeRO-3 parameter's partition (`ds_tensor`)
    and, when it is there, its whole data too (empty between uses, except for the parameters ZeRO-3 keeps whole on
    every rank: those under `stage3_param_persistence_threshold`, 1e5 values by default); else the tensor."""
    local = getattr(tensor, "_local_tensor", None)
    if local is not None:
        return [local]
    partition = getattr(tensor, "ds_tensor", None)
    if partition is not None:
        return [partition, tensor] if tensor.numel() else [partition]
    return [tensor]


def _bytes(tensors) -> int:
    """Bytes of the distinct memory the tensors hold on this rank: a tensor reached twice (the same storage, offset,
    size and type) counts once."""
    regions = {}
    for t in (part for tensor in tensors for part in held(tensor)):
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        regions[key] = t.numel() * t.element_size()
    return sum(regions.values())


def model_state_bytes(module: torch.nn.Module, optimizer) -> int:
    """Parameters (as stored: 4-bit weights count their bytes) plus optimiser state, on this rank, each tensor once:
    a deterministic memory measure whose order across strategies holds on any machine."""
    return _bytes([*module.parameters(), *_optimizer_tensors(optimizer, set())])
