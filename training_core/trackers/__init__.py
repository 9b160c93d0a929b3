"""Measurement trackers, each a context manager in its own module: throughput, memory, energy; and the analytic
FLOPs model with MFU. The training loop calls `step(...)` once per optimizer step and `start_window()` when the
warm-up steps are over, so every tracker measures the same window."""

from .energy import EnergyTracker
from .memory import MemoryTracker
from .throughput import ThroughputTracker

__all__ = ["EnergyTracker", "MemoryTracker", "ThroughputTracker"]
