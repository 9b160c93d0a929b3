"""A fake `pynvml` for tests: the device boundary of NVML. It knows a machine's GPUs in NVML's own order (every GPU
of the machine, whatever CUDA_VISIBLE_DEVICES says, as the real library) and answers the calls the project makes."""

from __future__ import annotations

import types
from dataclasses import dataclass


@dataclass
class FakeGPU:
    name: str
    uuid: str
    used: int = 0  # bytes
    energy_mj: int = 0
    energy_counter: bool = True


class NVMLError(Exception):
    pass


def fake_pynvml(gpus: list[FakeGPU], migs: dict[str, FakeGPU] | None = None) -> types.ModuleType:
    """A module with pynvml's functions over `gpus` (handles are the FakeGPU objects) and MIG instances by UUID."""
    migs = migs or {}
    module = types.ModuleType("pynvml")
    module.NVMLError = NVMLError

    def by_index(index):
        if not 0 <= index < len(gpus):
            raise NVMLError(f"invalid index {index}")
        return gpus[index]

    def by_uuid(uuid):
        for gpu in [*gpus, *migs.values()]:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError(f"no device {uuid}")

    def energy(handle):
        if not handle.energy_counter:
            raise NVMLError("not supported")
        return handle.energy_mj

    module.nvmlInit = lambda: None
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = by_index
    module.nvmlDeviceGetHandleByUUID = by_uuid
    module.nvmlDeviceGetUUID = lambda handle: handle.uuid
    module.nvmlDeviceGetName = lambda handle: handle.name.encode()
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=handle.used, total=80 * 2**30)
    module.nvmlDeviceGetTotalEnergyConsumption = energy
    module.nvmlSystemGetDriverVersion = lambda: b"580.65.06"
    return module


def eight_gpus() -> list[FakeGPU]:
    """An 8-GPU box, each GPU with different counters so that a test sees which one was read."""
    return [FakeGPU("NVIDIA A100-SXM4-80GB", f"GPU-{i}{i}{i}{i}aaaa-0000-0000-0000-00000000000{i}",
                    used=(i + 1) * 2**30, energy_mj=(i + 1) * 1000) for i in range(8)]
