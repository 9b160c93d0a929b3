"""Engines that run one optimizer step over a list of micro-batches (gradient accumulation), by the spec's `engine`
(`RunSpec.train_engine`: the recipe's for the strategy unless a cell names another):

- `ddp` -> `PlainEngine` (the recipe's LoRA path: HF Trainer + DDP): fp32 parameters (the master weights) and AdamW
  states on every rank, autocast in bf16/fp16, GradScaler for fp16, DDP with `find_unused_parameters=False` when
  several processes, gradients synchronised only on the last micro-batch, clip to 1.0, AdamW step, scheduler step.
  Each micro-batch loss is its own token mean, divided by the number of micro-batches (transformers 4.43's Trainer,
  the version the recipe pins).
- `zero1` / `zero2` / `zero3` -> `DeepSpeedEngine` (ZeRO-2 is the recipe's full fine-tuning path): the recipe's
  `DS_CONFIG_DICT` (no offload) at that stage, its bf16/fp16 modes, gradient clipping and accumulation; the client
  AdamW and schedule are handed to DeepSpeed.
- `fsdp2` -> `Fsdp2Engine`: `fully_shard` on every decoder layer, every CLIP layer and the root; mixed precision as
  ZeRO does it (fp32 sharded master parameters and AdamW states, bf16 compute, gradients reduced in fp32);
  `fsdp2_reshard` frees gathered parameters after each layer's forward (the ZeRO-3 analogue), else they stay until
  the backward (the ZeRO-2 analogue).
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


DEEPSPEED_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}


def ds_config(spec: RunSpec, world_size: int) -> dict:
    """The recipe's DS_CONFIG_DICT with its 'auto' values filled in as HF Trainer does, at the cell's ZeRO stage (2,
    the recipe's, unless `engine` names another)."""
    return {
        "zero_optimization": {
            "stage": DEEPSPEED_STAGES.get(spec.train_engine, 2),
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
    before_optimizer_step: list | None = None  # FSDP2's: calls made once the gradients are reduced, before the step

    def __init__(self, model: nn.Module, spec: RunSpec, device: Device, total_steps: int):
        self.spec, self.device = spec, device
        self.module = model
        self.model = self._wrap(model)
        self.optimizer = build_optimizer(model, spec)  # after wrapping: FSDP2's parameters are its shards
        self.scheduler = build_scheduler(self.optimizer, spec, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")
        self.skipped_steps = 0  # optimizer steps the fp16 loss scaler skipped (inf/nan gradients)
        self.last_scale = self.scaler.get_scale() if self.scaler.is_enabled() else None  # None: not counted

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP when several processes. gradient_as_bucket_view: the gradients are views into DDP's buckets, not a
        second copy of them (the estimator counts the buckets as the gradients, from the start:
        training_core/estimate/trace.py)."""
        if distributed.world_size() == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False, gradient_as_bucket_view=True,
        )

    def _accumulating(self, last: bool):
        """The context of one micro-batch's forward and backward: gradients synchronised on the last one only."""
        if last or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _forward_context(self):
        return autocast(self.spec, self.device)

    def train_step(self, micro_batches: list[dict]) -> torch.Tensor:
        """One optimizer step; returns the mean micro-batch loss as a 0-d tensor on the device (no host
        synchronisation here: the caller reads it once per step)."""
        total = torch.zeros((), dtype=torch.float32, device=self.device.torch)
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            with self._accumulating(i == n - 1):
                with self._forward_context():
                    loss = self.model(**model_inputs(batch, self.device.torch)).loss
                self.scaler.scale(loss / n).backward()
            total += loss.detach().float()
        for call in self.before_optimizer_step or ():
            call()
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
        return self._forward_context()

    @contextlib.contextmanager
    def full_state(self):
        """The whole trained model's state dict on the main rank (every rank holds all of it under DDP)."""
        yield self.module.state_dict()

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

    @contextlib.contextmanager
    def full_state(self):
        """The whole model's state dict on the main rank: ZeRO-1/2 hold every parameter on every rank; ZeRO-3's
        partitions are gathered first (a collective: every rank enters)."""
        if DEEPSPEED_STAGES[self.spec.train_engine] < 3:
            yield self.module.state_dict()
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            yield self.module.state_dict() if distributed.is_main() else None

    def save(self, directory, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load(self, directory, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        return client_state or {}


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards as units below the root: every CLIP encoder layer the forward runs (those after the
    feature layer never run: as units FSDP2 would wait for their backward) and every decoder layer."""
    embedder = model.model.vision_embed_tokens
    vision = embedder.img_processor.vision_model
    return [*vision.encoder.layers[:embedder.num_layers_used], *model.model.layers]


class Fsdp2Engine(PlainEngine):
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) with ZeRO's precision: fp32 sharded parameters (the master
    weights) and AdamW states, compute in the cell's bf16 (parameters cast per unit as they are gathered, so no
    autocast), gradients reduce-scattered in fp32. Accumulation: gradients are reduced on the last micro-batch only.
    The step is `PlainEngine`'s (its loss scaler is off: fp16 is refused by the spec)."""

    state_on_main_only = True  # `state_dict` gathers the whole state onto the main rank; the others get none

    def __init__(self, model: nn.Module, spec: RunSpec, device: Device, total_steps: int):
        super().__init__(model, spec, device, total_steps)
        self.before_optimizer_step = []  # called with no arguments once the gradients are reduced

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        compute = {"bf16": torch.bfloat16, "fp32": None}[self.spec.precision]  # fp16: refused by the spec
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        reshard = bool(self.spec.fsdp2_reshard)
        # the cell's own device type: FSDP2's default mesh is CUDA's wherever CUDA is, also for a `gpu: cpu` cell
        mesh = init_device_mesh(self.device.type, (distributed.world_size(),))
        for unit in shard_units(model):
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        return model

    def _accumulating(self, last: bool):
        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _forward_context(self):
        return contextlib.nullcontext()  # the mixed-precision policy casts each gathered unit

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)

    @contextlib.contextmanager
    def full_state(self):
        """The whole model's state dict, gathered from the shards onto the main rank's CPU (a collective)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.module, options=self._options())
        yield state if distributed.is_main() else None

    def state_dict(self) -> dict[str, Any]:
        """Trainable weights and the optimiser, gathered to full tensors on the main rank's CPU (a collective: every
        rank calls it; the others get empty parts), in the layout `PlainEngine` saves; the main rank writes it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        model_state = get_model_state_dict(self.module, options=self._options())
        return {"model": {k: v for k, v in model_state.items() if k in trainable},
                "optimizer": get_optimizer_state_dict(self.module, self.optimizer, options=self._options()),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The main rank's saved state, sent to every rank's shards (the others' copies are not read)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        main = distributed.is_main()
        set_model_state_dict(self.module, state["model"] if main else {},
                             options=self._options(broadcast_from_rank0=True, strict=False))
        set_optimizer_state_dict(self.module, self.optimizer, state["optimizer"] if main else {},
                                 options=self._options(broadcast_from_rank0=True))
        self.scheduler.load_state_dict(state["scheduler"])


ENGINES = {"ddp": PlainEngine, "zero1": DeepSpeedEngine, "zero2": DeepSpeedEngine, "zero3": DeepSpeedEngine,
           "fsdp2": Fsdp2Engine}


def build_engine(spec: RunSpec, model: nn.Module, device: Device, total_steps: int):
    return ENGINES[spec.train_engine](model, spec, device, total_steps)
