"""Does a predicted peak fit a GPU? The GPUs' memory as torch reports it, and the margin rule, stated.

The margin rule (assumptions, not fitted to anything; to be calibrated against measured rows on a GPU):
- caching-allocator slack: what the allocator reserves beyond what is allocated (fragmentation, rounding to its
  block sizes), taken as 10% of the allocated peak;
- the CUDA context of the process (driver, kernels), taken as 0.5 GiB;
- NCCL's buffers when the cell has more than one rank, taken as 0.25 GiB per rank.
A cell fits when peak x 1.10 + 0.5 GiB (+ 0.25 GiB) is at most the GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
# total memory as torch.cuda.get_device_properties reports it (bytes)
GPU_MEMORY = {
    "A100": 85_899_345_920,  # A100-SXM4-80GB
    "A100-40GB": 42_505_273_344,
    "H100": 85_520_809_984,  # H100 80GB HBM3
    "H200": 150_754_820_096,  # H200 141GB HBM3e
    "V100": 34_089_730_048,  # V100-SXM2-32GB
    "V100-16GB": 16_945_512_448,
    "L40S": 47_697_362_944,
    "A10": 23_677_960_192,
}
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
    total = GPU_MEMORY.get(gpu) or GPU_MEMORY.get(gpu.upper())
    if total is None:
        return Fit(gpu, None, needed, None, f"unknown GPU {gpu!r}: known are {', '.join(GPU_MEMORY)} "
                                            "(add its memory to GPU_MEMORY in training_core/estimate/fit.py)")
    verdict = "fits" if needed <= total else "does not fit"
    return Fit(gpu, total, needed, needed <= total, f"{verdict} ({needed / GIB:.1f} of {total / GIB:.1f} GiB)")


def fits_for(peak: int, world_size: int, cell_gpu: str, gpus=()) -> dict[str, Fit]:
    """The fit on each of `gpus`, or else on the cell's own GPU (none for a CPU cell: no device memory to judge)."""
    judged = list(gpus) or ([] if cell_gpu.lower() == "cpu" else [cell_gpu])
    return {gpu: fit(peak, world_size, gpu) for gpu in judged}
