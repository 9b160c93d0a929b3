"""Does a predicted peak fit a GPU? The GPU's memory from the catalogue (training_core/gpus.py), and the margin
rule, stated.

The margin rule (assumptions, not fitted to anything; to be calibrated against measured rows on a GPU):
- caching-allocator slack: what the allocator reserves beyond what is allocated (fragmentation, rounding to its
  block sizes), taken as 10% of the allocated peak;
- the CUDA context of the process (driver, kernels), taken as 0.5 GiB;
- NCCL's buffers when the cell has more than one rank, taken as 0.25 GiB per rank.
A cell fits when peak x 1.10 + 0.5 GiB (+ 0.25 GiB) is at most the GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from training_core.gpus import memory_bytes, memory_names

GIB = 2**30
SLACK = 0.10
CONTEXT = GIB // 2
NCCL = GIB // 4


@dataclass(frozen=True)
class Fit:
    gpu: str
    total: int | None
    needed: int
    fits: bool | None  # None: unknown GPU
    reason: str

    @property
    def margin(self) -> int | None:
        return None if self.total is None else self.total - self.needed


def needed_bytes(peak: int, world_size: int) -> int:
    return int(peak * (1 + SLACK) + CONTEXT + (NCCL if world_size > 1 else 0))


MARGIN_RULE = (f"fits if peak x {1 + SLACK:.2f} (caching-allocator slack) + {CONTEXT / GIB:g} GiB (CUDA context) "
               f"+ {NCCL / GIB:g} GiB (NCCL, multi-rank cells) <= the GPU's memory")


def fit(peak: int, world_size: int, gpu: str) -> Fit:
    needed = needed_bytes(peak, world_size)
    total = memory_bytes(gpu)
    if total is None:
        return Fit(gpu, None, needed, None, f"unknown GPU {gpu!r}: known are {', '.join(memory_names())} "
                                            "(add it to the GPU catalogue, CATALOGUE in training_core/gpus.py)")
    verdict = "fits" if needed <= total else "does not fit"
    return Fit(gpu, total, needed, needed <= total, f"{verdict} ({needed / GIB:.1f} of {total / GIB:.1f} GiB)")


def fits_for(peak: int, world_size: int, cell_gpu: str, gpus=()) -> dict[str, Fit]:
    """The fit on each of `gpus`, or else on the cell's own GPU (none for a CPU cell: no device memory to judge)."""
    judged = list(gpus) or ([] if cell_gpu.lower() == "cpu" else [cell_gpu])
    return {gpu: fit(peak, world_size, gpu) for gpu in judged}
