"""What a strategy is: how to build the trainable model for a spec (the engine that trains it is the spec's:
`RunSpec.train_engine`)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training_core import distributed
from training_core.model import Phi3VForCausalLM, build_config, build_model
from training_core.model.presets import PRESETS
from training_core.spec import RunSpec


@dataclass(frozen=True)
class Strategy:
    name: str
    prepare: Callable[[nn.Module, RunSpec], nn.Module]  # freezing / adapters on a built base model
    quantized: bool = False
    requires: tuple[str, ...] = ()  # optional packages it imports (training_core.capabilities.PACKAGES)


def model_config(spec: RunSpec):
    """The architecture: a preset, or a checkpoint directory's config.json."""
    if spec.model in PRESETS:
        return build_config(spec.model)
    from training_core.model import Phi3VConfig

    directory = Path(spec.model)
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"model {spec.model!r} is neither a preset ({sorted(PRESETS)}) nor a checkpoint directory with config.json"
        )
    from training_core.model.weights import read_config

    read_config(directory)  # sizes bounded, nested ones too, before anything is built from them
    return Phi3VConfig.from_pretrained(str(directory))


def build_base(spec: RunSpec, device: torch.device, dtype: torch.dtype, quantization=None,
               keep_random: Path | None = None, scratch: Path | None = None) -> Phi3VForCausalLM:
    """The base model on `device`: random (built on the meta device) or pretrained; 4-bit when `quantization`.
    `keep_random`: also write random weights there (unquantised, official layout), the base of a kept adapter.
    `scratch`: where a random 4-bit base is written before loading (the cell's directory; default a temporary one)."""
    if quantization is None:
        if spec.weights == "pretrained":
            return build_model(None, weights=spec.model, device=device, dtype=dtype, attn_implementation=spec.attention)
        model = build_model(model_config(spec), device=device, dtype=dtype, attn_implementation=spec.attention)
        if keep_random is not None:
            keep_random.mkdir(parents=True, exist_ok=True)
            save_local(model, keep_random)
        return model
    # bitsandbytes quantises at load time (from_pretrained of a directory): random weights are saved first
    if spec.weights == "pretrained":
        return _load_quantized(spec.model, spec, device, dtype, quantization)
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="phi3v-random-") as tmp:
            return _random_quantized(spec, device, dtype, quantization, keep_random, Path(tmp))
    return _random_quantized(spec, device, dtype, quantization, keep_random, scratch)


RANDOM_BASE = "random-base"  # in the cell's directory, while the ranks load it


def random_base_dtype(spec: RunSpec, dtype: torch.dtype) -> torch.dtype:
    """The random 4-bit base is written in the compute dtype (bf16/fp16: 8.3 GB for the real model, not fp32's 16.6 GB):
    its linear layers are quantised on loading anyway, and the parts kept unquantised are random either way (loaded
    into `dtype`)."""
    from training_core.precision import DTYPES

    return DTYPES[spec.precision] if spec.precision in ("bf16", "fp16") else dtype


def random_base_device(device: torch.device) -> torch.device:
    """Random weights are drawn on the cell's GPU when it has one (seconds; on the CPU the real model took 1-3
    minutes, torchrun's OMP_NUM_THREADS=1 leaving one thread), then written from there."""
    return device if device.type == "cuda" else torch.device("cpu")


def _random_quantized(spec, device, dtype, quantization, keep_random: Path | None, scratch: Path) -> Phi3VForCausalLM:
    """Random weights written once per node (its local rank 0; the real model is 16.6 GB in fp32), loaded 4-bit by
    every rank of the node, then removed. Every rank reaches both barriers whatever happens on another, so a failed
    write is an error on every rank, not a hang."""
    node = int(os.environ.get("GROUP_RANK", "0"))
    directory = scratch / (RANDOM_BASE if spec.nodes == 1 else f"{RANDOM_BASE}-node{node}")
    writer = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if writer:
        started = time.perf_counter()
        try:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            model = build_model(model_config(spec), device=random_base_device(device),
                                dtype=random_base_dtype(spec, dtype), attn_implementation="eager")
            save_local(model, directory)
            del model
            (directory / "complete").touch()
            print(f"[rank {distributed.rank()}] wrote the random base for 4-bit loading to {directory} "
                  f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        except Exception as exc:
            print(f"[rank {distributed.rank()}] could not write the random base to {directory}: {exc!r}",
                  file=sys.stderr)
    distributed.barrier()
    try:
        if not (directory / "complete").exists():
            raise RuntimeError(f"the random 4-bit base was not written to {directory} (see local rank 0's log)")
        if keep_random is not None:
            shutil.copytree(directory, keep_random, dirs_exist_ok=True, ignore=shutil.ignore_patterns("complete"))
        return _load_quantized(directory, spec, device, dtype, quantization)
    finally:
        distributed.barrier()  # every rank of the node has loaded it
        if writer:
            shutil.rmtree(directory, ignore_errors=True)


def save_local(model: Phi3VForCausalLM, directory: Path) -> None:
    """The official key set as model.safetensors + config.json, on every rank (`save_pretrained` writes only on
    the distributed main rank)."""
    from safetensors.torch import save_file

    from training_core.model.modeling import WTE_ALIAS

    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != WTE_ALIAS}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(str(directory))


def _load_quantized(directory, spec, device, dtype, quantization) -> Phi3VForCausalLM:
    from training_core.model.build import checkpoint_config

    model = Phi3VForCausalLM.from_pretrained(
        str(directory), config=checkpoint_config(Path(directory)), quantization_config=quantization, dtype=dtype,
        device_map=str(device), attn_implementation=spec.attention,
    )
    model._sync_vision_attention()
    return model


def enable_checkpointing(model: nn.Module, spec: RunSpec) -> None:
    """Activation checkpointing of the decoder and CLIP layers by the cell's policy (`all`, `none`, `every-K`: layers
    0, K, 2K, ... of each stack), as the cell's recipe revision ran it: non-reentrant (current), or torch's reentrant
    default (2024-06). transformers 5 makes the embedding output require grad for every `input_ids` model;
    transformers 4.38.1, which the 2024-06 recipe pinned, did so for peft models only, so that is undone for the
    others (under a frozen tower their decoder then gets no gradient, as it did)."""
    from training_core.recipe_revisions import get_revision
    from training_core.trackers.flops import policy_every

    every = policy_every(spec.checkpointing)
    if every == 0:
        return
    revision = get_revision(spec.recipe_revision)
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": revision.reentrant_checkpointing})
    for layers in checkpointed_stacks(model):
        for index, layer in enumerate(layers):
            layer.gradient_checkpointing = index % every == 0
    if revision.input_grads_for_peft_only and spec.strategy not in ("lora", "qlora"):
        model.disable_input_require_grads()


def checkpointed_stacks(model: nn.Module) -> list:
    """The layer stacks activation checkpointing applies to: CLIP's encoder layers and the decoder layers."""
    return [model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers, model.model.layers]


def freeze_never_used(model: nn.Module) -> None:
    """Parameters no output depends on (CLIP's layers after the feature layer, its post_layernorm) get no gradient on
    any engine; DDP (`find_unused_parameters=False`) and FSDP2 need them out of the gradient reduction, so they are
    frozen (nothing that trains changes; the recipe's LoRA path removes them instead)."""
    unused = model.unused_parameter_names() if hasattr(model, "unused_parameter_names") else set()
    for name, param in model.named_parameters():
        if name in unused:
            param.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) unique parameters; 4-bit weights count as the number of values they hold."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel() * (2 if param.dtype == torch.uint8 and hasattr(param, "quant_state") else 1)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
