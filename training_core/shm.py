"""Shared memory for the data loader (issue 32, item 6): loader workers hand their batches to the training process
through /dev/shm. Docker's default is 64 MB, while the recipe's loader on one 8-GPU node holds 4 workers x 2 prefetched
batches x 8 ranks of DocVQA batches of 23 MB (17 crops of 3x336x336 fp32): ~1.5 GB. Too little and the first step
dies of a bus error. `workers_that_fit` lowers the worker count to what fits (the row says so), and doctor names the
fix (`--shm-size` or `--ipc=host`). No torch here."""

from __future__ import annotations

import os

CROP_BYTES = 3 * 336 * 336 * 4  # one crop's pixel values, fp32
MARGIN = 1.5  # room for the text tensors, the pinned copies in flight and the allocator's rounding


def shm_total(path: str = "/dev/shm") -> int | None:
    """The size of the shared-memory file system, or None where there is none."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_frsize * stats.f_blocks


def batch_bytes(per_device_batch: int, num_crops: int) -> int:
    """A training micro-batch's pixel values: num_crops + 1 (the global view) crops per image."""
    return per_device_batch * (num_crops + 1) * CROP_BYTES


def loader_need(workers: int, prefetch: int, batch: int, local_ranks: int) -> int:
    return int(workers * prefetch * batch * local_ranks * MARGIN)


def workers_that_fit(wanted: int, prefetch: int, batch: int, local_ranks: int, shm: int | None) -> int:
    """The most workers (up to `wanted`) whose prefetched batches fit in `shm` (all of them when it is unknown)."""
    if shm is None or wanted == 0:
        return wanted
    per_worker = loader_need(1, prefetch, batch, local_ranks)
    return max(0, min(wanted, shm // per_worker)) if per_worker else wanted


def advice(shm: int, need: int) -> str:
    return (f"/dev/shm is {shm / 2**20:.0f} MiB, the recipe's loader holds about {need / 2**20:.0f} MiB there: run the "
            "container with --shm-size=16g (or --ipc=host)")
