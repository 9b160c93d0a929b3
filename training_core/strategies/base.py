"""What a strategy is: how to build the trainable model for a spec, and which engine trains it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from training_core.model import Phi3VForCausalLM, build_config, build_model
from training_core.model.presets import PRESETS
from training_core.spec import RunSpec


@dataclass(frozen=True)
class Strategy:
    name: str
    engine: Literal["deepspeed", "ddp"]
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
    return Phi3VConfig.from_pretrained(str(directory))


def build_base(spec: RunSpec, device: torch.device, dtype: torch.dtype, quantization=None,
               keep_random: Path | None = None) -> Phi3VForCausalLM:
    """The base model on `device`: random (built on the meta device) or pretrained; 4-bit when `quantization`.
    `keep_random`: also write random weights there (unquantised, official layout), the base of a kept adapter."""
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
    with tempfile.TemporaryDirectory(prefix="phi3v-random-") as tmp:
        save_local(build_model(model_config(spec), device="cpu", dtype=dtype, attn_implementation="eager"), Path(tmp))
        if keep_random is not None:
            shutil.copytree(tmp, keep_random, dirs_exist_ok=True)
        return _load_quantized(tmp, spec, device, dtype, quantization)


def save_local(model: Phi3VForCausalLM, directory: Path) -> None:
    """The official key set as model.safetensors + config.json, on every rank (`save_pretrained` writes only on
    the distributed main rank)."""
    from safetensors.torch import save_file

    from training_core.model.modeling import WTE_ALIAS

    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != WTE_ALIAS}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(str(directory))


def _load_quantized(directory, spec, device, dtype, quantization) -> Phi3VForCausalLM:
    model = Phi3VForCausalLM.from_pretrained(
        str(directory), quantization_config=quantization, dtype=dtype, device_map=str(device),
        attn_implementation=spec.attention,
    )
    model._sync_vision_attention()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) unique parameters; 4-bit weights count as the number of values they hold."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel() * (2 if param.dtype == torch.uint8 and hasattr(param, "quant_state") else 1)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
