"""Engines that run one optimizer step over a list of micro-batches (gradient accumulation):

- `PlainEngine` (the recipe's LoRA path: HF Trainer + DDP): autocast in bf16/fp16, GradScaler for fp16, DDP with
  `find_unused_parameters=False` when several processes, gradients synchronised only on the last micro-batch,
  clip to 1.0, AdamW step, scheduler step. Each micro-batch loss is its own token mean, divided by the number of
  micro-batches (transformers 4.43's Trainer, the version the recipe pins).
- `DeepSpeedEngine` (the recipe's full fine-tuning path): ZeRO-2 with the recipe's `DS_CONFIG_DICT` (no offload),
  its bf16/fp16 modes, gradient clipping and accumulation; the client AdamW and schedule are handed to DeepSpeed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from . import distributed
from .devices import Device
from .optim import MAX_GRAD_NORM, build_optimizer, build_scheduler
from .precision import autocast
from .spec import RunSpec

MODEL_INPUTS = ("input_ids", "labels", "attention_mask", "pixel_values", "image_sizes")


def model_inputs(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS if k in batch}


def ds_config(spec: RunSpec, world_size: int) -> dict:
    """The recipe's DS_CONFIG_DICT with its 'auto' values filled in as HF Trainer does."""
    return {
        "zero_optimization": {
            "stage": 2,
            "allgather_partitions": True,
            "allgather_bucket_size": 5e8,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "contiguous_gradients": True,
            "round_robin_gradients": True,
        },
        "fp16": {
            "enabled": spec.precision == "fp16",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": spec.precision == "bf16"},
        "train_micro_batch_size_per_gpu": spec.per_device_batch,
        "gradient_accumulation_steps": spec.global_batch // (world_size * spec.per_device_batch),
        "train_batch_size": spec.global_batch,
        "gradient_clipping": 1.0,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


class PlainEngine:
    def __init__(self, model: nn.Module, spec: RunSpec, device: Device, total_steps: int):
        self.spec, self.device = spec, device
        self.module = model
        self.optimizer = build_optimizer(model, spec)
        self.scheduler = build_scheduler(self.optimizer, spec, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")
        self.skipped_steps = 0  # optimizer steps the fp16 loss scaler skipped (inf/nan gradients)
        self.last_scale = self.scaler.get_scale() if self.scaler.is_enabled() else None  # None: not counted
        self.model = model
        if distributed.world_size() > 1:
            # gradient_as_bucket_view: the gradients are views into DDP's buckets, not a second copy of them (the
            # estimator counts the buckets as the gradients, from the start: training_core/estimate/trace.py)
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False,
                gradient_as_bucket_view=True,
            )

    def train_step(self, micro_batches: list[dict]) -> torch.Tensor:
        """One optimizer step; returns the mean micro-batch loss as a 0-d tensor on the device (no host
        synchronisation here: the caller reads it once per step)."""
        total = torch.zeros((), dtype=torch.float32, device=self.device.torch)
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or not isinstance(self.model, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with autocast(self.spec, self.device):
                    loss = self.model(**model_inputs(batch, self.device.torch)).loss
                self.scaler.scale(loss / n).backward()
            total += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.last_scale is not None:  # the scaler halves its scale exactly when it skipped the step (one sync, fp16)
            scale = self.scaler.get_scale()
            self.skipped_steps += scale < self.last_scale
            self.last_scale = scale
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / n

    def generation_model(self) -> nn.Module:
        return self.module

    def generation_context(self):
        return autocast(self.spec, self.device)

    def state_dict(self) -> dict[str, Any]:
        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        model_state = {k: v for k, v in self.module.state_dict().items() if k in trainable}
        return {"model": model_state, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = self.module.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"checkpoint has parameters this model lacks: {missing.unexpected_keys[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, spec: RunSpec, device: Device, total_steps: int):
        import deepspeed

        self.spec, self.device = spec, device
        optimizer = build_optimizer(model, spec)
        scheduler = build_scheduler(optimizer, spec, total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config(spec, distributed.world_size()),
            model_parameters=[p for p in model.parameters() if p.requires_grad],
        )
        self.module = self.engine.module

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps DeepSpeed's fp16 loss scaler skipped (its own count; 0 under bf16/fp32)."""
        return int(getattr(self.engine, "skipped_steps", 0) or 0)

    def train_step(self, micro_batches: list[dict]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=self.device.torch)
        for batch in micro_batches:
            loss = self.engine(**model_inputs(batch, self.device.torch)).loss
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        return total / len(micro_batches)

    def generation_model(self) -> nn.Module:
        return self.module

    def generation_context(self):
        return contextlib.nullcontext()

    def save(self, directory, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load(self, directory, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        return client_state or {}


def build_engine(kind: str, model: nn.Module, spec: RunSpec, device: Device, total_steps: int):
    return (DeepSpeedEngine if kind == "deepspeed" else PlainEngine)(model, spec, device, total_steps)
