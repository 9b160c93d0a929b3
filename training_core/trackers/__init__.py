"""Measurement trackers, each a context manager in its own module: throughput, memory, energy; and the analytic
FLOPs model with MFU (`flops`, arithmetic only: the report imports it without torch). The training loop calls
`step(...)` once per optimizer step and `start_window()` when the warm-up steps are over, so every tracker measures
the same window. Import each from its module (`from training_core.trackers.memory import MemoryTracker`): this
package imports none of them, so `flops` stays light."""
