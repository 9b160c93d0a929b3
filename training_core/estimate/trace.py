"""One optimizer step of a cell, traced with fake tensors: the cell's own model, strategy, checkpointing, precision
and engine code run on tensors that have shapes but no storage, so the real 4.15B preset traces on a laptop.

- The model is built on the meta device, then every parameter and buffer becomes a fake tensor inside the fake mode
  (`to_empty` cannot: it breaks the shared `wte`); the strategy then freezes, prunes or adds adapters as in a cell.
- The batch is the longest micro-batch of the cell's data (by the same length rule as `data validate --lengths`),
  encoded by the cell's processor for real; the image embedder gets the placeholder positions and image sizes
  ahead (`precomputed`), which fake tensors cannot be asked for.
- DDP strategies (lora, qlora) run the real `PlainEngine.train_step`: forward, backward, clipping, AdamW. DeepSpeed
  strategies (full, frozen_vision) run forward and backward with each gradient dropped as it is produced (ZeRO-2
  moves it into its buckets at once) and get DeepSpeed's own buffers added analytically (`deepspeed_states`;
  ZeRO-3's partitions, persistent and gathered parameters in `zero3_states`). FSDP2 likewise (`_with_fsdp2`).
- QLoRA's 4-bit weights are stand-ins with bitsandbytes' storage (packed uint8, an fp32 absmax per 64 values)
  dequantized in forward and backward (bitsandbytes' Params4bit cannot hold a fake tensor).
- flash_attention_2 is traced as sdpa's fused kernel (no L x L matrix either): flash-attn needs CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from training_core import inputs
from training_core.data.datasets import TrainDataset
from training_core.data.stats import example_length
from training_core.devices import Device
from training_core.engine import PlainEngine, ds_config, model_inputs
from training_core.model import build_model
from training_core.optim import param_groups
from training_core.precision import DTYPES, weights_dtype
from training_core.spec import RunSpec
from training_core.strategies import get_strategy
from training_core.strategies.base import enable_checkpointing, freeze_never_used, model_config
from training_core.tasks import get_task

from .tracker import BLOCK, CATEGORIES, PeakTracker, rounded


@dataclass
class Trace:
    peak_bytes: int
    phase: str
    breakdown: dict[str, int]
    tokens: int  # of the traced micro-batch (its longest example sets the peak)
    examples: int
    method: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    params: int = 0  # values of the model's parameters as the cell holds them (QLoRA's 4-bit weights not counted)
    trainable: int = 0  # of them, the trainable ones


# ------------------------------------------------------------------------------------------------------ data
def measured_examples(spec: RunSpec, n_examples: int) -> set[int] | None:
    """The examples any rank trains on in a throughput cell's measured window (the steps after its warm-up), in the
    order the cell's sampler gives them (inputs.EpochBatches: shuffled by seed and epoch): the window's peak is set by
    its longest micro-batch, which the warm-up may have taken from a twin of more examples than the window holds.
    None for other cells (every example counts)."""
    if spec.mode != "throughput":
        return None
    before = spec.warmup_steps * spec.grad_accum  # micro-batches per rank before the window
    during = spec.measured_steps * spec.grad_accum
    per_epoch = inputs.EpochBatches(range(n_examples), spec.per_device_batch, spec.world_size, 0, spec.seed).per_epoch
    if per_epoch == 0 or during >= per_epoch:  # a whole epoch on every rank is in the window: every example counts
        return None
    found: set[int] = set()
    for rank in range(spec.world_size):  # the window starts `before` micro-batches in: that epoch, that far into it
        batches = inputs.EpochBatches(range(n_examples), spec.per_device_batch, spec.world_size, rank, spec.seed,
                                      epoch=before // per_epoch, consumed=before % per_epoch)
        for batch in itertools.islice(iter(batches), during):
            found.update(i for _, i in batch)
    return found


def longest_batch(spec: RunSpec, data_dir: Path, config=None) -> tuple[dict, int]:
    """The micro-batch of the cell's `per_device_batch` longest training examples (of its measured window, for a
    throughput cell: `measured_examples`), collated as the cell collates, and the number of examples looked at.
    `config`: the cell's (read again when not given)."""
    config = config or model_config(spec)
    processor = inputs.build_processor(spec, config)
    train, _ = inputs.records(spec, data_dir)
    task = get_task(spec.task)
    crops = spec.num_crops or task.num_crops
    lengths = [example_length(task, r, processor.tokenizer, processor.chat_prompt, crops, config.crop_size,
                              config.patch_size, seed=spec.seed) for r in train]
    window = measured_examples(spec, len(train))
    candidates = sorted(window) if window else range(len(train))
    chosen = sorted(candidates, key=lambda i: -lengths[i])[:spec.per_device_batch]
    dataset = TrainDataset([train[i] for i in chosen], task, processor, seed=spec.seed, ablation=spec.image_ablation)
    collate = inputs.TrainCollator(processor.tokenizer.pad_token_id, task.keep_attention_mask)
    return collate([dataset[i] for i in range(len(chosen))]), len(train)


def accumulated(spec: RunSpec) -> int:
    """Micro-batches the trace runs per optimizer step: 2 when the cell accumulates gradients (from the second on the
    first's gradients are held), else 1."""
    return min(2, spec.grad_accum)


def _ddp_buckets(trainable: list, tracker: PeakTracker) -> list:
    """DDP's reducer buckets under gradient_as_bucket_view: one flat tensor per dtype of the trainable parameters,
    allocated when the model is wrapped, with each parameter's gradient a view into it (so autograd accumulates into
    them in place, as the reducer does). Returned to be held while the step is traced."""
    flat = []
    by_dtype: dict = {}
    for p in trainable:
        by_dtype.setdefault(p.dtype, []).append(p)
    tracker.enter("setup", "gradients")
    for dtype, params in by_dtype.items():
        bucket = torch.zeros(sum(p.numel() for p in params), dtype=dtype)
        offset = 0
        for p in params:
            p.grad = bucket[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        flat.append(bucket)
    return flat


# ----------------------------------------------------------------------------------------------------- model
class _Dequantize(torch.autograd.Function):
    """x @ dequant(W)^T with only the packed weight saved (bitsandbytes' 4-bit matmul saves no dequantized copy).
    Forward (bitsandbytes 0.50 on CUDA past 1536 rows, and on the CPU): the weight dequantised straight into the
    compute dtype. Backward (MatMul4Bit.backward): `dequantize_4bit(B).to(grad.dtype)`, the weight in the dtype it was
    loaded in (quant_state.dtype: the cell's weights dtype) and then a copy in the gradient's dtype, both held at once."""

    @staticmethod
    def forward(ctx, x, packed, absmax, shape, dtype, load_dtype):
        ctx.save_for_backward(packed, absmax)
        ctx.shape, ctx.dtype, ctx.load_dtype = shape, dtype, load_dtype
        weight = _unpack(packed, absmax, shape, dtype)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        packed, absmax = ctx.saved_tensors
        loaded = _unpack(packed, absmax, ctx.shape, ctx.load_dtype)
        weight = loaded.to(grad.dtype) if ctx.load_dtype != grad.dtype else loaded
        return grad @ weight, None, None, None, None, None


def _unpack(packed: torch.Tensor, absmax: torch.Tensor, shape, dtype) -> torch.Tensor:
    """The dequantized weight's memory (a temporary of the compute dtype); values are irrelevant under fake tensors."""
    return packed.new_empty(shape, dtype=dtype)


class FourBitLinear(nn.Linear):
    """A stand-in for bitsandbytes' Linear4bit: the same storage (packed uint8 values, an fp32 absmax per 64), the
    same compute dtype, its output cast back to the input's dtype (Linear4bit.forward: `.to(inp_dtype)`, fp32 under a
    QLoRA cell's fp32 weights); peft wraps it like any Linear, and where peft's LoRA wraps a 4-bit layer it clones
    the base output first (peft/tuners/lora/bnb.py: "for 4bit, we need to defensively clone"): `peft_clones`."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype, load_dtype: torch.dtype, blocksize: int = 64):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        n = linear.in_features * linear.out_features
        device = linear.weight.device  # meta: quantized before any weight exists, as bitsandbytes loads 4-bit
        self.weight = nn.Parameter(torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device=device), requires_grad=False)
        self.register_buffer("absmax", torch.empty(math.ceil(n / blocksize), dtype=torch.float32, device=device))
        self.bias = linear.bias
        self.compute_dtype, self.load_dtype = compute_dtype, load_dtype
        self.peft_clones = False

    def forward(self, x):
        out = _Dequantize.apply(x.to(self.compute_dtype), self.weight, self.absmax,
                                (self.out_features, self.in_features), self.compute_dtype, self.load_dtype)
        out = out + self.bias.to(out.dtype) if self.bias is not None else out
        out = out.to(x.dtype)
        return out.clone() if self.peft_clones else out


def _peft_clones(model: nn.Module) -> None:
    """Mark the 4-bit stand-ins that peft's LoRA wraps (their base output is cloned, as peft does for bitsandbytes)."""
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, FourBitLinear) and hasattr(module, "lora_A"):
            base.peft_clones = True


def _quantize(model: nn.Module, spec: RunSpec, config) -> None:
    from training_core.strategies.lora import qlora_quantization

    skip = qlora_quantization(spec, config).llm_int8_skip_modules or []
    compute = DTYPES[spec.precision]
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(full == s or full.startswith(s + ".") or full.endswith(s)
                                                        for s in skip):
                setattr(module, child_name, FourBitLinear(child, compute, weights_dtype(spec)))


def _fake_parameters(model: nn.Module) -> None:
    """Every parameter and buffer a fresh (fake) tensor of its shape and dtype; shared modules once."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device="cpu"),
                                                        requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")


@contextlib.contextmanager
def _adapters_stay_put():
    """peft moves each new adapter to its base layer's device with `Module.to()`, which cannot swap a fake parameter
    for itself; everything is already on the (fake) CPU, so a move to the CPU without a dtype is skipped while the
    strategy prepares the model."""
    original = nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "cpu":
            return original(self, *args, **kwargs)
        if dtype is not None:  # a cast: new (fake) tensors, not a swap
            for module in self.modules():
                for name, param in list(module._parameters.items()):
                    if param is not None and param.is_floating_point() and param.dtype != dtype:
                        module._parameters[name] = nn.Parameter(param.detach().to(dtype),
                                                                requires_grad=param.requires_grad)
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                        module._buffers[name] = buffer.to(dtype)
        return self

    with mock.patch.object(nn.Module, "to", to):
        yield


@contextlib.contextmanager
def _scaler_always_steps():
    """fp16's GradScaler skips the optimizer step when a gradient overflowed, which it reads from a tensor (`.item()`):
    a fake tensor has no value. The estimate is of a step that is taken (the unscaling and the scale update still run,
    in place, as they do)."""
    def step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)

    with mock.patch.object(torch.amp.GradScaler, "_maybe_opt_step", step):
        yield


def _reduced(tracker: PeakTracker, param: torch.Tensor) -> None:
    """ZeRO-2 moves a produced gradient into its buckets: the parameter holds none, and the backward now reduces."""
    param.grad = None
    tracker.enter("backward, reducing", "activations")


def _sharded(tracker: PeakTracker, world: int, kept: list, param: torch.Tensor) -> None:
    """FSDP2 reduce-scatters a produced gradient into its fp32 shard: the gathered gradient goes, the shard stays (from
    this point of the backward on, so the shards grow as the backward proceeds)."""
    param.grad = None
    tracker.enter("backward, reducing", "gradients")
    kept.append(torch.empty(_rank0_shard(param, world), dtype=torch.float32))
    tracker.enter("backward, reducing", "activations")


def _embedder(model: nn.Module):
    return model.model.vision_embed_tokens


# ----------------------------------------------------------------------------------------------------- trace
ESTIMATED_ENGINES = ("ddp", "zero1", "zero2", "zero3", "fsdp2")


class NotEstimated(Exception):
    """A cell the estimator does not cover; the reason is said where the prediction would be."""


def trace_step(spec: RunSpec, data_dir: Path, block: int = BLOCK) -> Trace:
    """`block`: allocation rounding (the CUDA caching allocator's 512 bytes; 1 to compare with a CPU's allocator)."""
    started = time.perf_counter()
    strategy = get_strategy(spec.strategy)
    config = model_config(spec)
    batch, examples = longest_batch(spec, data_dir, config)
    notes = []
    attention = spec.attention
    if attention == "flash_attention_2":
        attention = "sdpa"
        notes.append("flash_attention_2 traced as sdpa's fused kernel (no L x L matrix either)")
    if spec.train_engine not in ESTIMATED_ENGINES:
        raise NotEstimated(f"engine {spec.train_engine!r} is not estimated yet (the estimator covers "
                           f"{', '.join(ESTIMATED_ENGINES)}); its memory is measured when the cell runs")
    fsdp = spec.train_engine == "fsdp2"
    # ZeRO-1/2 and FSDP2: one micro-batch's forward and backward in the compute dtype, each gradient taken away as it
    # is produced (into ZeRO's buckets, or reduce-scattered into FSDP2's fp32 shards); their own states analytic
    deepspeed = spec.train_engine in ("zero1", "zero2", "zero3") or fsdp
    dtype = weights_dtype(spec)
    if deepspeed and spec.precision != "fp32":
        dtype = DTYPES[spec.precision]  # DeepSpeed's bf16/fp16 modes hold the module in that dtype; FSDP2 gathers in it
    model = build_model(config, device="meta", dtype=dtype, attn_implementation=attention)
    real = model_inputs(batch, torch.device("cpu"))
    ids = real["input_ids"]
    positions = torch.nonzero((ids < 0) & (ids > -1_000_000), as_tuple=True)
    sizes = [tuple(int(v) for v in s) for s in real["image_sizes"]] if "image_sizes" in real else []

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = PeakTracker(block)
    if strategy.quantized:  # on the meta model: the full-precision weights never exist (bitsandbytes loads 4-bit)
        _quantize(model, spec, config)
    with fake, tracker:
        tracker.enter("setup", "weights")
        _fake_parameters(model)
        with _adapters_stay_put():
            model = strategy.prepare(model, spec)
        if strategy.quantized:
            _peft_clones(model)
        if spec.train_engine in ("ddp", "fsdp2"):
            freeze_never_used(model)
        enable_checkpointing(model, spec)
        model.config.use_cache = False
        model.train()
        tracker.enter("setup", "inputs")
        fake_batch = {k: fake.from_tensor(v) for k, v in real.items()}
        for tensor in fake_batch.values():
            tracker.track(tensor, "inputs")
        _embedder(model).precomputed = (tuple(fake.from_tensor(p) for p in positions), sizes)
        trainable = [p for p in model.parameters() if p.requires_grad]
        grad_shards: list = []  # FSDP2's, held to the end of the trace
        for p in trainable:
            if fsdp:
                p.register_post_accumulate_grad_hook(functools.partial(_sharded, tracker, spec.world_size,
                                                                       grad_shards))
            elif deepspeed:  # ZeRO-2 takes each gradient into its buckets as it is produced (from the first on)
                p.register_post_accumulate_grad_hook(functools.partial(_reduced, tracker))
            else:
                p.register_post_accumulate_grad_hook(lambda q: tracker.reclassify(q.grad, "gradients"))
        model.register_forward_pre_hook(lambda m, a: tracker.enter("forward", "activations"))
        model.register_forward_hook(lambda m, a, o: tracker.enter("backward", "activations"))
        if deepspeed:
            out = model(**fake_batch)
            out.loss.backward()
            optimizer = None
        else:
            # one rank's step, never wrapped in DDP (a process group may exist: the 2-rank CPU check); DDP's own
            # memory, its buckets, is added below
            with mock.patch("training_core.engine.distributed.world_size", return_value=1):
                engine = PlainEngine(model, spec, Device("cpu", 0, "cpu", None, None), total_steps=1)
            optimizer = engine.optimizer
            engine.last_scale = None  # skipped fp16 steps are not counted here: a fake scale has no value to read
            for group in optimizer.param_groups:  # the cell's device's AdamW path, not the fake CPU tensors' default
                group["foreach"] = target_foreach(spec)
            optimizer.register_step_pre_hook(lambda o, a, k: tracker.enter("optimizer step", "temporaries"))
            optimizer.register_step_post_hook(lambda o, a, k: [tracker.reclassify(t, "optimizer states")
                                                               for s in o.state.values() for t in s.values()
                                                               if isinstance(t, torch.Tensor)])
            if spec.world_size > 1:  # DDP's buckets (gradient_as_bucket_view: the gradients are views into them)
                buckets = _ddp_buckets(trainable, tracker)
            with _scaler_always_steps():  # two micro-batches when the cell accumulates: the first's gradients are held
                engine.train_step([fake_batch] * accumulated(spec))  # through the second (the third is the same)
    _embedder(model).precomputed = None
    if spec.world_size > 1 and not deepspeed:
        notes.append("DDP's gradient buckets counted from the start (gradient_as_bucket_view: the gradients live there)")
        del buckets
    method = "traced (fake tensors): forward, backward, AdamW step; from the second step on, the optimizer states"
    if fsdp:
        peak, phase, breakdown = _with_fsdp2(spec, model, tracker)
        method = "traced forward and backward (fake tensors) + FSDP2's shards and gathered units (analytic)"
    elif spec.train_engine == "zero3":
        peak, phase, breakdown = _with_zero3(spec, model, tracker)
        method = "traced forward and backward (fake tensors) + DeepSpeed ZeRO-3's partitions and gathered parameters (analytic)"
        notes.append("ZeRO-3's gathered parameters bounded by its reuse distance, prefetch bucket and largest module "
                     "(its coordinator is not replayed)")
    elif deepspeed:
        groups = [sum(p.numel() for p in g["params"]) for g in param_groups(model, spec.weight_decay)]
        peak, phase, breakdown = _with_deepspeed(spec, trainable, tracker, groups)
        stage = spec.train_engine[-1]
        method = f"traced forward and backward (fake tensors) + DeepSpeed ZeRO-{stage} buffers (analytic)"
    else:
        peak, phase, breakdown = _steady(tracker)
    return Trace(peak_bytes=int(peak), phase=phase, breakdown=breakdown, tokens=int(ids.numel()),
                 examples=examples, method=method, notes=notes, seconds=round(time.perf_counter() - started, 2),
                 params=sum(p.numel() for p in model.parameters()), trainable=sum(p.numel() for p in trainable))


def _steady(tracker: PeakTracker) -> tuple[int, str, dict]:
    """The peak of a run, not of its first step: the optimizer states made in step 1 are there in every later
    forward and backward."""
    states = tracker.by_category["optimizer states"]
    best = (tracker.peak, tracker.peak_phase, tracker.breakdown())
    for phase in ("forward", "backward"):
        if phase in tracker.phase_peaks:
            total = tracker.phase_peaks[phase][0]
            if total + states > best[0]:
                parts = tracker.breakdown(phase)
                parts["optimizer states"] += states
                best = (total + states, phase, parts)
    return best


def target_foreach(spec: RunSpec) -> bool:
    """Whether torch's AdamW takes its foreach path on the cell's device: torch's own default
    (torch/optim/optimizer.py `_default_to_fused_or_foreach`: foreach when every parameter is a plain tensor on a
    device with foreach kernels, CUDA among them, not the CPU). The trace runs on fake CPU tensors, where the default
    would be the single-tensor path, so the choice is made here from the cell's device and passed explicitly."""
    return spec.gpu.lower() != "cpu"


def adamw_step_temporaries(group_numels: list[int], foreach: bool, block: int = BLOCK) -> int:
    """The bytes torch's AdamW allocates for itself during one step (from the second on: its states exist) over fp32
    parameters of these sizes, one param group each as DeepSpeed keeps one flat partition per group: traced on fake
    tensors, not assumed. torch 2.13: the single-tensor path holds two partition-sized temporaries at once (sqrt, then
    the division), the foreach path one (`_foreach_sqrt`, then in-place); groups are stepped one after the other."""
    numels = [n for n in group_numels if n > 0]
    if not numels:
        return 0
    tracker = PeakTracker(block)
    with FakeTensorMode():
        params = [nn.Parameter(torch.empty(n, dtype=torch.float32)) for n in numels]
        for p in params:
            p.grad = torch.empty(p.numel(), dtype=torch.float32)
        optimizer = torch.optim.AdamW([{"params": [p]} for p in params], lr=1e-5, weight_decay=0.01, foreach=foreach)
        optimizer.step()  # the states are made in the first step
        with tracker:
            held = [*params, *(p.grad for p in params),
                    *(t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))]
            for tensor in held:  # already there: in-place updates of these are not new memory
                tracker.track(tensor)
            before = tracker.total
            optimizer.step()
    return tracker.peak - before


@dataclass(frozen=True)
class ZeroStates:
    """DeepSpeed ZeRO-2's own buffers per rank (deepspeed 0.19: runtime/zero/stage_1_and_2.py), from the recipe's
    DS_CONFIG_DICT: the fp32 master partition, Adam's two moments, the gradient partition, the reduce buckets (two
    with overlap_comm, each reduce_bucket_size elements of the gradient dtype) and, at the step, the partition's flat
    fp32 gradient and AdamW's own temporaries (`adamw_step_temporaries` on the cell's device: one fp32
    partition-sized tensor on CUDA's foreach path, two on the CPU's single-tensor path; the CPU's three partitions in
    all were measured here)."""
    master: int
    moments: int
    grad_partition: int
    buckets: int
    step_temporaries: int
    full_gradients: int  # every trainable gradient whole, in the module's dtype (ZeRO-1 between boundaries)


def deepspeed_states(spec: RunSpec, trainable: int, groups: list[int] | None = None) -> ZeroStates:
    """`groups`: the trainable parameters per param group (decay, no decay); one group of all when not given."""
    config = ds_config(spec, spec.world_size)["zero_optimization"]
    grad_bytes = 2 if spec.precision in ("bf16", "fp16") else 4
    part = math.ceil(trainable / spec.world_size)
    group_parts = [math.ceil(n / spec.world_size) for n in (groups or [trainable])]
    buckets = (2 if config["overlap_comm"] else 1) * int(config["reduce_bucket_size"]) * grad_bytes
    flat_grad = sum(rounded(4 * n) for n in group_parts)
    return ZeroStates(master=rounded(4 * part), moments=2 * rounded(4 * part), grad_partition=rounded(grad_bytes * part),
                      buckets=rounded(buckets),
                      step_temporaries=flat_grad + adamw_step_temporaries(group_parts, target_foreach(spec)),
                      full_gradients=rounded(grad_bytes * trainable))


def _with_deepspeed(spec: RunSpec, trainable: list, tracker: PeakTracker, groups: list[int]) -> tuple[int, str, dict]:
    """The phases of a ZeRO-2 step from the second on (measured on a CPU, deepspeed 0.19): the weights and the fp32
    master partition throughout, Adam's moments from step 1 on; the reduce buckets and the gradient partition from
    the backward's first gradient (phase "backward, reducing") to its end; at the step, the gradient partition, the partition's flat fp32
    gradient and AdamW's temporaries. The largest phase is the peak."""
    zero = deepspeed_states(spec, sum(p.numel() for p in trainable), groups)
    kept = zero.master + zero.moments
    candidates = []
    reducing = zero.buckets + zero.grad_partition
    # ZeRO-1 reduces only at the accumulation boundary: before the last micro-batch every gradient is held whole
    # (param.grad in the module's dtype), through the next micro-batch's forward and backward
    held = zero.full_gradients if spec.train_engine == "zero1" and spec.grad_accum > 1 else 0
    for phase, extra in (("forward", 0), ("backward", 0), ("backward, reducing", reducing)):
        if phase in tracker.phase_peaks:
            total, parts = tracker.phase_peaks[phase][0], tracker.breakdown(phase)
            parts.update({"optimizer states": kept, "gradients": (zero.grad_partition if extra else 0) + held,
                          "communication buckets": zero.buckets if extra else 0})
            candidates.append((total + kept + extra + held, phase, parts))
    setup = tracker.breakdown("setup")
    base = setup["weights"] + setup["inputs"]
    step_parts = {c: 0 for c in CATEGORIES}
    step_parts.update({"weights": setup["weights"], "inputs": setup["inputs"], "optimizer states": kept,
                       "gradients": zero.grad_partition, "temporaries": zero.step_temporaries,
                       "communication buckets": 0})
    candidates.append((base + kept + zero.grad_partition + zero.step_temporaries, "optimizer step", step_parts))
    return max(candidates, key=lambda c: c[0])


# DeepSpeed 0.19's ZeRO-3 defaults (runtime/zero/config.py), used where the cell's DeepSpeed config sets none
ZERO3_DEFAULTS = {"stage3_param_persistence_threshold": 100_000, "stage3_prefetch_bucket_size": 50_000_000,
                  "stage3_max_reuse_distance": 1_000_000_000, "sub_group_size": 1_000_000_000}


def zero3_subgroups(group_parts: list[list[int]], size: int) -> list[int]:
    """ZeRO-3 steps its optimizer one sub-group at a time: each param group's partitions cut where their running
    total reaches `sub_group_size` (stage3.py `_create_fp16_sub_groups`). Returns each sub-group's numel."""
    out = []
    for parts in group_parts:
        total = sum(parts)
        if total <= size:
            out.append(total)
            continue
        running = 0
        for n in parts:
            running += n
            if running >= size:
                out.append(running)
                running = 0
        if running:
            out.append(running)
    return [n for n in out if n > 0]


@dataclass(frozen=True)
class Zero3States:
    """DeepSpeed ZeRO-3's memory per rank (deepspeed 0.19, runtime/zero/stage3.py, partition_parameters.py and
    partitioned_param_coordinator.py), from the cell's DeepSpeed config and DeepSpeed's defaults:
    - `partitions`: every parameter's partition (ceil(numel / W) values) in the module's dtype;
    - `persistent`: the parameters of at most `stage3_param_persistence_threshold` values, also whole on every rank;
    - `live`: the gathered (whole) non-persistent parameters in forward and backward, bounded by the coordinator's
      reuse distance + prefetch bucket + the largest module's (and by all of them; the coordinator is not replayed);
    - `master` (none when the module is fp32: DeepSpeed steps those partitions in place), `moments` (AdamW's two
      fp32), `grad_partition` (the flat gradient partition in the module's dtype), `bucket` (the contiguous-gradients
      buffer of `reduce_bucket_size` values): all from the engine's start;
    - `reducing`: while a bucket is reduced, `reduce_scatter_coalesced`'s flat copy of it (and on a CPU gloo's copy
      of that input: measured, a 200 KB input costs 200 KB);
    - `step`: one sub-group at a time, its flat fp32 gradient and AdamW's temporaries on the cell's device."""
    partitions: int
    persistent: int
    live: int
    master: int
    moments: int
    grad_partition: int
    bucket: int
    reducing: int
    step: int


def zero3_states(spec: RunSpec, model: nn.Module) -> Zero3States:
    world = spec.world_size
    config = {**ZERO3_DEFAULTS, **ds_config(spec, world)["zero_optimization"]}
    threshold = int(config["stage3_param_persistence_threshold"])
    compute = 4 if spec.precision == "fp32" else 2
    params = list(model.parameters())

    def part(p) -> int:  # DeepSpeed pads each partition to ceil(numel / W)
        return math.ceil(p.numel() / world)

    gathered_all = sum(p.numel() for p in params if p.numel() > threshold)
    largest = max((sum(p.numel() for p in m.parameters(recurse=False) if p.numel() > threshold)
                   for m in model.modules()), default=0)
    live = compute * min(gathered_all, int(config["stage3_max_reuse_distance"])
                         + int(config["stage3_prefetch_bucket_size"]) + largest)
    groups = [[part(p) for p in g["params"]] for g in param_groups(model, spec.weight_decay)]
    trainable = sum(sum(g) for g in groups)
    flat = compute * min(int(config["reduce_bucket_size"]), trainable * world) if world > 1 else 0
    subgroups = zero3_subgroups(groups, int(config["sub_group_size"]))
    return Zero3States(
        partitions=rounded(compute * sum(part(p) for p in params)),
        persistent=rounded(compute * sum(p.numel() for p in params if p.numel() <= threshold)),
        live=rounded(live), master=0 if compute == 4 else rounded(4 * trainable), moments=2 * rounded(4 * trainable),
        grad_partition=rounded(compute * trainable),
        bucket=rounded(compute * int(config["reduce_bucket_size"])) if config.get("contiguous_gradients") else 0,
        reducing=rounded(flat) * (2 if spec.gpu.lower() == "cpu" else 1),
        step=max((rounded(4 * n) + adamw_step_temporaries([n], target_foreach(spec)) for n in subgroups), default=0))


def _with_zero3(spec: RunSpec, model: nn.Module, tracker: PeakTracker) -> tuple[int, str, dict]:
    """ZeRO-3 per rank from the second step on (`Zero3States`): the traced forward and backward hold every weight
    whole, ZeRO-3 its partitions, the persistent parameters and the live gathered ones; each gradient leaves the
    backward as it is produced (into the bucket), as ZeRO-2's does. The largest phase is the peak."""
    z = zero3_states(spec, model)
    compute = 4 if spec.precision == "fp32" else 2
    traced_weights = compute * sum(p.numel() for p in model.parameters())  # the trace's: every weight whole
    kept = z.master + z.moments
    candidates = []
    for phase in ("forward", "backward", "backward, reducing"):
        if phase in tracker.phase_peaks:
            total, parts = tracker.phase_peaks[phase][0], tracker.breakdown(phase)
            extra = z.reducing if phase == "backward, reducing" else 0
            weights = parts["weights"] - traced_weights + z.partitions + z.persistent + z.live
            parts.update({"weights": weights, "optimizer states": kept, "gradients": z.grad_partition,
                          "communication buckets": z.bucket + extra})
            candidates.append((total - traced_weights + z.partitions + z.persistent + z.live + kept
                               + z.grad_partition + z.bucket + extra, phase, parts))
    setup = tracker.breakdown("setup")
    step_parts = {c: 0 for c in CATEGORIES}
    step_parts.update({"weights": z.partitions + z.persistent, "inputs": setup["inputs"], "optimizer states": kept,
                       "gradients": z.grad_partition, "temporaries": z.step, "communication buckets": z.bucket})
    candidates.append((sum(step_parts.values()), "optimizer step", step_parts))
    return max(candidates, key=lambda c: c[0])


def _rank0_shard(param: torch.Tensor, world: int) -> int:
    """Values of a parameter on FSDP2's rank 0: dim 0 split in ceil(d0 / W) rows (rank 0 holds the largest shard)."""
    if param.dim() == 0:
        return 1
    return math.ceil(param.shape[0] / world) * (param.numel() // max(param.shape[0], 1))


def _with_fsdp2(spec: RunSpec, model: nn.Module, tracker: PeakTracker) -> tuple[int, str, dict]:
    """FSDP2 (training_core/engine.py: every used CLIP layer and decoder layer a unit, the root the rest) per rank,
    from the second step on: the fp32 shards of every parameter and AdamW's two fp32 moments of the trainable ones
    throughout; the traced forward and backward hold every weight gathered in the compute dtype (without
    `fsdp2_reshard` every unit stays gathered from its forward to its backward; with it, only the root and the
    largest unit twice, for the prefetch); the fp32 gradient shards as the traced backward produces them (each
    gradient's shard from its reduce-scatter on), to the step; between
    accumulation boundaries the unsharded gradients in the compute dtype. At the step: shards, gradient shards,
    moments and AdamW's temporaries."""
    world = spec.world_size
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    shards = rounded(4 * sum(_rank0_shard(p, world) for p in params))  # the gradient shards are traced (`_sharded`)
    trainable_shard = sum(_rank0_shard(p, world) for p in trainable)
    moments, grad_shards = 2 * rounded(4 * trainable_shard), rounded(4 * trainable_shard)
    compute = 4 if spec.precision == "fp32" else 2
    gathered_freed = 0
    if spec.fsdp2_reshard:
        from training_core.engine import shard_units

        units = [sum(p.numel() for p in unit.parameters()) for unit in shard_units(model)]
        gathered_freed = compute * (sum(units) - 2 * max(units, default=0))
    held = rounded(compute * sum(p.numel() for p in trainable)) if spec.grad_accum > 1 else 0
    if target_foreach(spec):  # foreach over each group's shards: one temporary per shard, all at once
        groups = [sum(_rank0_shard(p, world) for p in g["params"]) for g in param_groups(model, spec.weight_decay)]
        temporaries = adamw_step_temporaries(groups, True)
    else:  # the single-tensor path steps shard after shard (FSDP2 keeps no flat partition, unlike DeepSpeed)
        temporaries = adamw_step_temporaries([_rank0_shard(p, world) for p in trainable], False)
    candidates = []
    for phase in ("forward", "backward", "backward, reducing"):
        if phase in tracker.phase_peaks:
            total, parts = tracker.phase_peaks[phase][0], tracker.breakdown(phase)
            parts["weights"] += shards - gathered_freed
            parts["optimizer states"] = moments
            parts["gradients"] += held
            candidates.append((total - gathered_freed + shards + moments + held, phase, parts))
    setup = tracker.breakdown("setup")
    step_parts = {c: 0 for c in CATEGORIES}
    step_parts.update({"weights": shards, "inputs": setup["inputs"], "optimizer states": moments,
                       "gradients": grad_shards, "temporaries": temporaries})
    candidates.append((shards + setup["inputs"] + moments + grad_shards + temporaries, "optimizer step", step_parts))
    return max(candidates, key=lambda c: c[0])


def twin_dir(spec: RunSpec, root: Path) -> Path:
    """Where the cell's synthetic twin is written for estimating (shared by the cells that would write the same
    twin: task, size, seed); the cell's own data path otherwise."""
    n = inputs.needed_train_examples(spec)
    return root / f"{spec.task}-{n}-{spec.seed}-{spec.synthetic_eval if spec.mode == 'accuracy' else 1}"


def estimate_cell(spec: RunSpec, root: Path | None, cell_dir: Path | None = None) -> dict:
    """The prediction of one cell as the row and the CLI record it (`predicted.*`). `cell_dir`: the cell's own
    directory, whose synthetic twin (written here if missing) the cell then reads too; else one under `root`."""
    notes = []
    if cell_dir is None and spec.data == "synthetic" and inputs.needed_train_examples(spec) > inputs.MAX_TWIN_TRAIN:
        # the estimator needs only the longest micro-batch: a twin of at most MAX_TWIN_TRAIN examples (the twin's
        # examples are drawn independently, so more would only repeat lengths already seen); a cell of
        # global_batch 10^8 had it write 10^8 examples
        wanted = inputs.needed_train_examples(spec)
        spec = spec.model_copy(update={"synthetic_train": inputs.MAX_TWIN_TRAIN})
        notes.append(f"longest micro-batch of a {inputs.MAX_TWIN_TRAIN}-example twin (the cell's would hold {wanted})")
    trace = trace_step(spec, cell_dir if cell_dir is not None else twin_dir(spec, root))
    trace.notes[:0] = notes
    return {"peak_bytes": trace.peak_bytes, "phase": trace.phase, "breakdown": trace.breakdown,
            "tokens": trace.tokens, "examples": trace.examples, "method": trace.method, "notes": trace.notes,
            "params": trace.params, "trainable": trace.trainable,
            "seconds": trace.seconds}
