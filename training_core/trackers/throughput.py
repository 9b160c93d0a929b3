"""Throughput over the measured optimizer steps (warm-up steps excluded).

The device is synchronised before every clock read; the window runs from the end of the last warm-up step to the
end of the last measured step. `images_per_s` = images of the measured steps summed over all ranks / the longest
rank's window; `tokens_per_s` counts non-pad tokens; step-time percentiles are this rank's measured steps.

`data_wait_s` is the time the loop waited for its micro-batches over the measured steps (the clock read before
asking the loader and after getting the batches, while the device is idle: it was synchronised at the end of the
previous step), and `data_wait_share` that time over the summed step times: the share of the window the
accelerator waited for input. Both are the largest over ranks (the slowest rank holds the others up).

With `cpu_clock` (cells on a CPU: `time.thread_time`, the training thread's own CPU time, summed over ranks),
`images_per_cpu_s` counts images per second of that CPU time over the same window: work done, not wall time, so it
barely moves when other processes share the cores, yet falls when a change makes the cell do more work. It covers
the work of the training thread only (not the memory sampler's, nor loader workers'): the CI gate runs its cells
single-threaded (OMP_NUM_THREADS=1, 0 loader workers), where that is all of the training work.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class StepRecord:
    seconds: float
    images: int
    tokens: int
    samples: int
    data_wait_s: float = 0.0


@dataclass
class ThroughputTracker:
    warmup_steps: int
    sync: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.perf_counter
    on_window_start: list[Callable[[], None]] = field(default_factory=list)
    cpu_clock: Callable[[], float] | None = None  # e.g. time.process_time: the CPU-time throughput
    steps: list[StepRecord] = field(default_factory=list)
    _last: float | None = None
    window_start: float | None = None
    window_end: float | None = None
    cpu_start: float | None = None
    cpu_end: float | None = None
    excluded_s: float = 0.0  # inside the measured window, not training (checkpoint saves)
    excluded_cpu_s: float = 0.0

    def now(self) -> float:
        self.sync()
        return self.clock()

    def __enter__(self) -> ThroughputTracker:
        self._last = self.now()
        if self.warmup_steps == 0:
            self._start_window(self._last)
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _start_window(self, at: float) -> None:
        self.window_start = at
        if self.cpu_clock is not None:
            self.cpu_start = self.cpu_clock()
        for callback in self.on_window_start:
            callback()

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Work between steps that is not training (a checkpoint save): left out of the step times and, inside the
        measured window, out of its wall and CPU time."""
        start, cpu = self.now(), self.cpu_clock() if self.cpu_clock is not None else None
        try:
            yield
        finally:
            spent = self.now() - start
            self._last += spent  # the next step's time starts after it
            if self.window_start is not None:
                self.excluded_s += spent
                if cpu is not None:
                    self.excluded_cpu_s += self.cpu_clock() - cpu

    def step(self, images: int, tokens: int, samples: int, data_wait_s: float = 0.0) -> None:
        """Call once at the end of every optimizer step, with the time it waited for its input."""
        now = self.now()
        self.steps.append(StepRecord(now - self._last, images, tokens, samples, data_wait_s))
        self._last = now
        if len(self.steps) == self.warmup_steps:
            self._start_window(now)
        elif len(self.steps) > self.warmup_steps:
            self.window_end = now
            if self.cpu_clock is not None:
                self.cpu_end = self.cpu_clock()

    @property
    def measured(self) -> list[StepRecord]:
        return self.steps[self.warmup_steps :]

    def metrics(self, world_size: int = 1, sum_all: Callable = float, max_all: Callable = float) -> dict:
        measured = self.measured
        out = {"warmup_steps": min(len(self.steps), self.warmup_steps), "measured_steps": len(measured)}
        if not measured or self.window_start is None or self.window_end is None:
            return out
        wall = max_all(self.window_end - self.window_start - self.excluded_s)
        images, tokens, samples = (sum_all(sum(getattr(s, k) for s in measured)) for k in ("images", "tokens", "samples"))
        times = sorted(s.seconds for s in measured)
        waited = sum(s.data_wait_s for s in measured)
        out.update({
            "measured_wall_s": wall,
            "images_per_s": images / wall,
            "images_per_s_per_gpu": images / wall / world_size,
            "samples_per_s": samples / wall,
            "tokens_per_s": tokens / wall,
            "step_time_s_p50": statistics.median(times),
            "step_time_s_p90": _percentile(times, 0.9),
            "data_wait_s": max_all(waited),
            "data_wait_share": max_all(waited / sum(times)) if sum(times) > 0 else 0.0,
        })
        if self.excluded_s:
            out["excluded_s"] = max_all(self.excluded_s)
        if self.cpu_start is not None and self.cpu_end is not None:
            cpu = sum_all(self.cpu_end - self.cpu_start - self.excluded_cpu_s)
            out["cpu_s"] = cpu
            out["images_per_cpu_s"] = images / cpu if cpu > 0 else None
        return out


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)
