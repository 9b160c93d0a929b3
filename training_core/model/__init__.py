"""Phi-3(.5)-vision, native on transformers 5.x: config, presets, model, processor.

Contract names used by the rest of the project: `PRESETS`, `build_config(preset, **overrides)`,
`build_model(config, *, weights=None, device="cpu", dtype=None, attn_implementation="sdpa")`,
`num_image_tokens(width, height, num_crops)`.
"""

from .build import ATTENTION_IMPLEMENTATIONS, build_config, build_model, build_processor, save_tiny_model_dir
from .config import Phi3VConfig
from .image_processing import Phi3VImageProcessor, hd_geometry, hd_transform, num_image_tokens
from .modeling import Phi3VForCausalLM, Phi3VModel
from .presets import PRESETS, UNCONFIRMED
from .processing import Phi3VProcessor, parse_image_tags
from .tokenizer import build_tiny_tokenizer


def _register_auto_classes() -> None:
    """Let transformers' Auto classes resolve model_type "phi3_v" to this native implementation, never remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register("phi3_v", Phi3VConfig)
        AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM)
    except ValueError:  # already registered (module reloaded)
        pass


_register_auto_classes()

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "PRESETS",
    "UNCONFIRMED",
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "Phi3VModel",
    "Phi3VProcessor",
    "build_config",
    "build_model",
    "build_processor",
    "build_tiny_tokenizer",
    "hd_geometry",
    "hd_transform",
    "num_image_tokens",
    "parse_image_tags",
    "save_tiny_model_dir",
]
