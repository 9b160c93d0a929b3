"""Energy per image from NVML's total-energy counter (mJ, Volta and newer), over the measured window, summed over
ranks. Absent where the counter is not available (CPU, old GPUs, restricted NVML)."""

from __future__ import annotations

from collections.abc import Callable

from training_core.devices import Device
from training_core.nvml import handle_for


class EnergyTracker:
    def __init__(self, device: Device):
        self._read = None
        self.start_mj = self.end_mj = None
        if device.type == "cuda":
            try:
                pynvml, handle = handle_for(device.index)  # NVML's own numbering: CUDA_VISIBLE_DEVICES mapped
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

    def metrics(self, images_total: float | None, sum_all: Callable = float, min_all: Callable = float) -> dict:
        """Energy summed over ranks, reported only when every rank read its counter (agreed first, so every rank
        takes part in the same collectives: ranks whose NVML differs never wait on each other)."""
        measured = self._read is not None and self.start_mj is not None and self.end_mj is not None
        if not min_all(1.0 if measured else 0.0) or not images_total:
            return {}
        joules = sum_all((self.end_mj - self.start_mj) / 1000.0)
        return {"energy_j": joules, "energy_j_per_image": joules / images_total}
