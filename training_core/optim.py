"""The recipe's optimiser: torch AdamW (0.9, 0.95), eps 1e-7, weight decay on all but biases and norm weights (HF
Trainer's rule), a linear schedule with warm-up, gradient clipping at 1.0."""

from __future__ import annotations

import re

import torch
from torch import nn

from .spec import RunSpec

BETAS = (0.9, 0.95)
EPS = 1e-7
MAX_GRAD_NORM = 1.0
_NO_DECAY = [re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")]


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, nn.LayerNorm) or any(p.search(full.lower()) for p in _NO_DECAY):
                names.add(full)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    no_decay = _no_decay_names(model)
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if name in no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, spec.weight_decay) if g["params"]]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=BETAS, eps=EPS)


def linear_with_warmup(step: int, warmup: int, total: int) -> float:
    """transformers' `get_linear_schedule_with_warmup` factor (same formula; importing it costs ~1 s per cell)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, spec: RunSpec, total_steps: int):
    warmup, total = spec.lr_warmup_steps, max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: linear_with_warmup(step, warmup, total))
