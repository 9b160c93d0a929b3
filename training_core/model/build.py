"""Contract entry points: `build_config`, `build_model`, `save_tiny_model_dir`.

`build_model(config, weights=None)` builds random weights without ever holding a full fp32 copy on the CPU: the
model is constructed on the meta device with the target dtype as default, then materialised directly on the target
device and initialised there (non-persistent buffers such as RoPE frequencies are recomputed in fp32).
`build_model(config, weights=DIR)` loads a checkpoint directory (official or saved by this project); the
directory's config.json is the truth for the architecture, a preset only fills what it lacks.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import Phi3VConfig
from .image_processing import Phi3VImageProcessor
from .modeling import Phi3VForCausalLM
from .presets import preset_dict
from .processing import Phi3VProcessor
from .tokenizer import save_tiny_tokenizer

log = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
_STRUCTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def build_config(preset: str, **overrides) -> Phi3VConfig:
    """A preset's config with keyword overrides (any `Phi3VConfig` field)."""
    values = preset_dict(preset)
    values.update(overrides)
    return Phi3VConfig(**values)


def check_attn_implementation(name: str) -> str:
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={name!r}: choose one of {list(ATTENTION_IMPLEMENTATIONS)}")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "attn_implementation='flash_attention_2' needs the flash-attn package, which is not installed: on a "
            "CUDA machine install the gpu extra (see README, 'GPU machines'), or use attn_implementation='sdpa'"
        )
    return name


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _random_model(config: Phi3VConfig, device, dtype: torch.dtype) -> Phi3VForCausalLM:
    with torch.device("meta"), _default_dtype(dtype):
        model = Phi3VForCausalLM(config)
    model.to_empty(device=device)
    model.initialize_weights()
    model._sync_vision_attention()
    return model


def checkpoint_config(directory: Path) -> Phi3VConfig:
    """The config of a checkpoint directory, checked against its weights before the model is built from it: sizes
    within bounds, and every tensor the config's model has at the shape the safetensors headers hold (a tampered
    vocabulary size is a WeightsError naming config.json and the tensors, not transformers' RuntimeError)."""
    from .weights import check_shapes, read_config

    raw = read_config(directory)
    config = Phi3VConfig.from_pretrained(str(directory))
    if "quantization_config" not in raw:  # a checkpoint saved quantised holds packed shapes
        shapes_only = Phi3VConfig(**config.to_dict())
        shapes_only._attn_implementation = "eager"  # the official config names flash_attention_2: not needed here
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in Phi3VForCausalLM(shapes_only).state_dict().items()}
        check_shapes(expected, directory)
    return config


def _pretrained_model(config: Phi3VConfig | None, weights: Path, device, dtype, attn) -> Phi3VForCausalLM:
    if not (weights / "config.json").exists():
        raise ValueError(
            f"weights={str(weights)!r} is not a checkpoint directory (no config.json): download the checkpoint "
            "(e.g. microsoft/Phi-3.5-vision-instruct) into a local directory and pass that directory"
        )
    ckpt_config = checkpoint_config(weights)
    if config is not None:
        differing = [k for k in _STRUCTURE_KEYS if getattr(config, k) != getattr(ckpt_config, k)]
        if differing:
            log.warning("checkpoint %s overrides the given config for %s", weights, differing)
    model = Phi3VForCausalLM.from_pretrained(
        str(weights), config=ckpt_config, dtype=dtype, device_map=str(device), attn_implementation=attn
    )
    model._sync_vision_attention()
    return model


def build_model(
    config: Phi3VConfig | None,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> Phi3VForCausalLM:
    """Random-initialised (`weights=None`) or loaded from a checkpoint directory."""
    attn = check_attn_implementation(attn_implementation)
    dtype = dtype or torch.float32
    if weights is not None:
        return _pretrained_model(config, Path(weights), device, dtype, attn)
    if config is None:
        raise ValueError("build_model needs a config (build_config(preset)) when weights is None")
    config = Phi3VConfig(**config.to_dict())  # never mutate the caller's config
    config._attn_implementation = attn
    return _random_model(config, torch.device(device), dtype)


def build_processor(config: Phi3VConfig, tokenizer, num_crops: int = 4) -> Phi3VProcessor:
    return Phi3VProcessor(
        tokenizer, Phi3VImageProcessor(num_crops=num_crops, crop_size=config.crop_size, patch_size=config.patch_size)
    )


def save_tiny_model_dir(directory: str | Path, *, seed: int = 0, num_crops: int = 4, **overrides) -> Path:
    """A complete `tiny` model directory (config, random weights, tokenizer, preprocessor config) that loads exactly
    like a real checkpoint directory: `build_model(None, weights=dir)` and `Phi3VProcessor.from_pretrained(dir)`."""
    directory = Path(directory)
    torch.manual_seed(seed)
    config = build_config("tiny", **overrides)
    model = build_model(config, attn_implementation="sdpa")
    model.save_pretrained(str(directory))
    tokenizer = save_tiny_tokenizer(directory)
    build_processor(config, tokenizer, num_crops=num_crops).save_pretrained(directory)
    return directory
