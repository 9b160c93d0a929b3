"""Precision with the recipe's semantics, and the combinations a device cannot do.

- bf16: full fine-tuning under DeepSpeed runs DeepSpeed's bf16 mode; LoRA/QLoRA (DDP) run bf16 autocast.
- fp16: fp32 master weights + autocast fp16 with dynamic loss scaling (DeepSpeed's fp16 mode, or GradScaler).
- fp32: no mixed precision (not in the recipe; the CPU baseline).
Weights are loaded in bf16 when flash attention is on, else fp32, as the recipe's `create_model` does.

`unsupported_reason` returns why a combination cannot run here (the cell then ends as `unsupported`), never
letting a run silently fall back (HF Trainer with fp16 on a CPU quietly trains in fp32).
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

from .devices import Device
from .spec import RunSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def weights_dtype(spec: RunSpec) -> torch.dtype:
    return torch.bfloat16 if spec.attention == "flash_attention_2" else torch.float32


def unsupported_reason(spec: RunSpec, device: Device) -> str | None:
    cap = device.capability
    if spec.precision == "fp16" and device.type == "cpu":
        return "fp16 mixed precision needs a CUDA GPU; on a CPU it would silently train in fp32"
    if spec.attention == "flash_attention_2":
        if spec.precision != "bf16":
            return f"flash attention needs bf16 (the guide's known issue: not with {spec.precision})"
        if device.type != "cuda":
            return "flash attention needs a CUDA GPU"
        if cap is not None and cap < (8, 0):
            return f"flash attention needs an Ampere or newer GPU; {device.name} is sm_{cap[0]}{cap[1]}"
        if importlib.util.find_spec("flash_attn") is None:
            return "flash attention needs the flash-attn package (install the gpu extra: make setup-gpu)"
    if spec.precision == "bf16" and cap is not None and cap < (8, 0):
        return f"bf16 needs an Ampere or newer GPU; {device.name} is sm_{cap[0]}{cap[1]}"
    if spec.strategy == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            return "QLoRA needs the bitsandbytes package"
        if cap is not None and cap < (7, 5):
            return f"QLoRA's 4-bit kernels need a Turing or newer GPU; {device.name} is sm_{cap[0]}{cap[1]}"
    if spec.gpu != "cpu" and device.type == "cpu":
        return f"the cell is for {spec.gpu} GPUs but no CUDA device is available here"
    return None


def autocast(spec: RunSpec, device: Device):
    """The autocast context of the DDP/plain engine (DeepSpeed manages its own precision)."""
    if spec.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[spec.precision])
