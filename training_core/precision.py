"""Precision with the recipe's semantics.

- bf16: full fine-tuning under DeepSpeed runs DeepSpeed's bf16 mode; LoRA/QLoRA (DDP) run bf16 autocast.
- fp16: fp32 master weights + autocast fp16 with dynamic loss scaling (DeepSpeed's fp16 mode, or GradScaler).
- fp32: no mixed precision (not in the recipe; the CPU baseline).
Weights are loaded in bf16 when flash attention is on, else fp32, as the recipe's `create_model` does.

Which combinations a device cannot do (fp16 on a CPU, bf16 before Ampere, ...) is decided in
`training_core.capabilities`: such a cell ends as `unsupported`, never silently falling back (HF Trainer with fp16
on a CPU quietly trains in fp32).
"""

from __future__ import annotations

import contextlib

import torch

from .devices import Device
from .spec import RunSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def weights_dtype(spec: RunSpec) -> torch.dtype:
    return torch.bfloat16 if spec.attention == "flash_attention_2" else torch.float32


def autocast(spec: RunSpec, device: Device):
    """The autocast context of the DDP/plain engine (DeepSpeed manages its own precision)."""
    if spec.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[spec.precision])
