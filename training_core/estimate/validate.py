"""The estimator's check on a CPU: one real optimizer step of the cell, its peak allocated bytes taken from the torch
profiler's allocator events (the CPU allocator's own running total), independent of the estimator's tracker.

The model is built inside the profiled region, so the total counts every byte the step holds (weights included);
the batch is the estimator's (the longest micro-batch), so both see the same work. DeepSpeed strategies run through
the cell's DeepSpeed engine in this process (gloo, world size 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from training_core import distributed
from training_core.devices import Device
from training_core.engine import build_engine, model_inputs
from training_core.precision import weights_dtype
from training_core.spec import RunSpec
from training_core.strategies import get_strategy
from training_core.strategies.base import build_base, enable_checkpointing, model_config
from training_core.strategies.lora import qlora_quantization

from .trace import longest_batch


def _allocation_peak(prof) -> int:
    peak = 0
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == torch._C._profiler._EventType.Allocation and node.extra_fields.device.type == "cpu":
            peak = max(peak, node.extra_fields.total_allocated)
    return int(peak)


def measured_step_peak(spec: RunSpec, data_dir: Path, steps: int = 2) -> int:
    """Peak allocated bytes of building the cell's model and running `steps` optimizer steps on the longest batch
    (from the second on, the optimizer states are there in forward and backward)."""
    if spec.world_size != 1:
        raise ValueError("the CPU check runs one process: give a spec with world size 1")
    strategy = get_strategy(spec.strategy)
    batch, _ = longest_batch(spec, data_dir)
    device = Device("cpu", 0, "cpu", None, None)
    if strategy.engine == "deepspeed":
        distributed.init("cpu", always=True)
    config = model_config(spec)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        quantization = qlora_quantization(spec, config) if strategy.quantized else None
        torch.manual_seed(spec.seed)
        model = build_base(spec, torch.device("cpu"), weights_dtype(spec), quantization)
        model = strategy.prepare(model, spec)
        if spec.gradient_checkpointing:
            enable_checkpointing(model, spec)
        model.config.use_cache = False
        model.train()
        engine = build_engine(strategy.engine, model, spec, device, total_steps=1)
        for _ in range(steps):
            engine.train_step([{k: v.clone() for k, v in model_inputs(batch, torch.device("cpu")).items()}])
        del engine, model
    return _allocation_peak(prof)
