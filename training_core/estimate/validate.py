"""The estimator's check on a CPU: one real optimizer step of the cell, its peak allocated bytes taken from the torch
profiler's allocator events (the CPU allocator's own running total), independent of the estimator's tracker.

The model is built inside the profiled region, so the running total counts every byte the steps hold (weights
included); the peak is taken while the steps run (loading a 4-bit base has a transient peak of its own);
the batch is the estimator's (the longest micro-batch), so both see the same work. DeepSpeed strategies run through
the cell's DeepSpeed engine in this process (gloo, world size 1).

A 4-bit base is loaded from a safetensors file, and on a CPU its unquantised weights (embeddings, the vision tower,
the head, the norms) stay in the file's memory map, which the allocator never sees: on a GPU they are copied into
device memory. They are copied into allocated memory here too (`_own_mapped_weights`), inside the profiled region.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from training_core import distributed
from training_core.devices import Device
from training_core.engine import build_engine, model_inputs
from training_core.precision import weights_dtype
from training_core.spec import RunSpec
from training_core.strategies import get_strategy
from training_core.strategies.base import build_base, enable_checkpointing, freeze_never_used, model_config
from training_core.strategies.lora import qlora_quantization

from .trace import accumulated, longest_batch

STEPS = "phi3v: measured steps"


def _allocation_peak(prof) -> int:
    """The peak of the CPU allocator's running total while the steps ran (the `STEPS` range), less what was allocated
    when the profiled region began (memory an earlier cell of this process still holds is not this cell's). The
    weights, allocated before the steps, are in the running total; the model's loading is not the step's peak."""
    events, window = [], None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == torch._C._profiler._EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.total_allocated, node.extra_fields.alloc_size))
        elif node.name == STEPS:
            window = (node.start_time_ns, node.end_time_ns)
    if not events or window is None:
        raise RuntimeError("the profiler recorded no allocation in the measured steps")
    events.sort()
    _, total, size = events[0]
    before = total - size  # the running total just before the region's first allocation (a free has size < 0)
    inside = [t for when, t, _ in events if window[0] <= when <= window[1]]
    return int(max(inside) - before)


def _file_mapped() -> list[tuple[int, int]]:
    """The address ranges of this process's file-backed memory maps (Linux; none elsewhere)."""
    ranges = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return ranges
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith("/"):
            start, end = (int(v, 16) for v in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _own_mapped_weights(model: torch.nn.Module) -> int:
    """Copy every parameter and buffer whose storage lies in a file mapping into allocated memory (tied tensors stay
    tied); returns the bytes copied."""
    mapped = _file_mapped()
    copies: dict[int, torch.Tensor] = {}
    moved = 0
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for tensor in table.values():
                if tensor is None or tensor.device.type != "cpu":
                    continue
                pointer = tensor.untyped_storage().data_ptr()
                if pointer not in copies:
                    if not any(start <= pointer < end for start, end in mapped):
                        continue
                    copies[pointer] = tensor.data.clone()
                    moved += tensor.untyped_storage().nbytes()
                tensor.data = copies[pointer]
    return moved


class _OneAtATime(Sequence):
    """A step's micro-batches, each a fresh copy made when the engine reaches it: a cell's loader hands them to the
    device one at a time (the others wait in host memory), so a list of copies made up front would count every
    micro-batch's inputs in the CPU's one memory at once."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {k: v.clone() for k, v in model_inputs(self.batch, torch.device("cpu")).items()}


def measured_step_peak(spec: RunSpec, data_dir: Path, steps: int = 2) -> int:
    """Peak allocated bytes (weights included) while `steps` optimizer steps of the cell run on its longest batch
    (from the second on, the optimizer states are there in forward and backward)."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    if spec.world_size != started:
        raise ValueError(f"the CPU check runs the cell's {spec.world_size} process(es) (torchrun for more than one); "
                         f"{started} were started")
    strategy = get_strategy(spec.strategy)
    # joins torchrun's group when there is one: before the twin is read, which local rank 0 writes behind a barrier
    distributed.init("cpu", always=spec.train_engine != "ddp")
    batch, _ = longest_batch(spec, data_dir)
    device = Device("cpu", 0, "cpu", None, None)
    config = model_config(spec)
    gc.collect()  # an earlier cell's garbage is not freed inside this cell's region
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        quantization = qlora_quantization(spec, config) if strategy.quantized else None
        torch.manual_seed(spec.seed)
        model = build_base(spec, torch.device("cpu"), weights_dtype(spec), quantization)
        _own_mapped_weights(model)
        model = strategy.prepare(model, spec)
        if spec.train_engine in ("ddp", "fsdp2"):
            freeze_never_used(model)
        enable_checkpointing(model, spec)
        model.config.use_cache = False
        model.train()
        engine = build_engine(spec, model, device, total_steps=1)
        # the plain engine steps the optimizer once per call, as traced; DeepSpeed at its accumulation boundary
        micro = spec.grad_accum if spec.train_engine.startswith("zero") else accumulated(spec)
        with torch.profiler.record_function(STEPS):
            for _ in range(steps):
                engine.train_step(_OneAtATime(batch, micro))
        del engine, model
    return _allocation_peak(prof)


def measured_adamw_temporaries(group_numels: list[int], foreach: bool) -> int:
    """What torch's AdamW allocates for itself in its second step over real fp32 parameters of these sizes (one param
    group each), by the CPU allocator's running total: the check of `trace.adamw_step_temporaries` with the same
    implementation (CPU tensors take the foreach path when asked to)."""
    params = [torch.nn.Parameter(torch.zeros(n)) for n in group_numels if n > 0]
    for p in params:
        p.grad = torch.full((p.numel(),), 1e-3)
    optimizer = torch.optim.AdamW([{"params": [p]} for p in params], lr=1e-5, weight_decay=0.01, foreach=foreach)
    optimizer.step()
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.empty(1)  # the region's first allocation: the running total before the step
        with torch.profiler.record_function(STEPS):
            optimizer.step()
    return _allocation_peak(prof)


def main(argv: list[str] | None = None) -> int:
    """`torchrun --nproc_per_node=W -m training_core.estimate.validate --spec S --data-root R`: the allocator's peak of
    two real steps of the cell on every rank, as JSON on rank 0's stdout ({"ranks": [bytes, ...]}): how `harness
    tune` checks a CPU trial's memory (a CPU row has only the process's RSS)."""
    import argparse
    import json

    import torch.distributed as dist

    from .trace import twin_dir

    parser = argparse.ArgumentParser(prog="python -m training_core.estimate.validate", description=main.__doc__)
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--data-root", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = RunSpec.load(args.spec)
    peak = measured_step_peak(spec, twin_dir(spec, args.data_root))
    ranks = [peak]
    if dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, peak)
    if distributed.is_main():
        print(json.dumps({"ranks": ranks}), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
