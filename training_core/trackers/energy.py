"""Energy per image from NVML's total-energy counter (mJ, Volta and newer), over the measured window, summed over
ranks. Absent where the counter is not available (CPU, old GPUs, restricted NVML)."""

from __future__ import annotations

from collections.abc import Callable

from training_core.devices import Device


class EnergyTracker:
    def __init__(self, device: Device):
        self._read = None
        self.start_mj = self.end_mj = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception:
                self._read = None

    def __enter__(self) -> EnergyTracker:
        return self

    def __exit__(self, *exc) -> None:
        if self._read is not None and self.start_mj is not None:
            self.end_mj = self._read()

    def start_window(self) -> None:
        if self._read is not None:
            self.start_mj = self._read()

    def metrics(self, images_total: float | None, sum_all: Callable = float) -> dict:
        if self._read is None or self.start_mj is None or self.end_mj is None or not images_total:
            return {}
        joules = sum_all((self.end_mj - self.start_mj) / 1000.0)
        return {"energy_j": joules, "energy_j_per_image": joules / images_total}
