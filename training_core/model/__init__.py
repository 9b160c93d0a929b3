"""Phi-3(.5)-vision, native on transformers 5.x: config, presets, model, processor.

Contract names used by the rest of the project: `PRESETS`, `build_config(preset, **overrides)`,
`build_model(config, *, weights=None, device="cpu", dtype=None, attn_implementation="sdpa")`,
`num_image_tokens(width, height, num_crops)`.

Names are loaded on first use (PEP 562), so importing one light module of this package (`presets`, `geometry`,
`image_tags`, `tiny_vocab`) never brings in torch or transformers: the CLI's `plan`, `report` and data checks rely
on that. The model classes register themselves with transformers' Auto classes when `modeling` is imported.
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it
_EXPORTS = {
    "ATTENTION_IMPLEMENTATIONS": "build",
    "build_config": "build",
    "build_model": "build",
    "build_processor": "build",
    "save_tiny_model_dir": "build",
    "Phi3VConfig": "config",
    "hd_geometry": "geometry",
    "num_image_tokens": "geometry",
    "Phi3VImageProcessor": "image_processing",
    "hd_transform": "image_processing",
    "parse_image_tags": "image_tags",
    "Phi3VForCausalLM": "modeling",
    "Phi3VModel": "modeling",
    "PRESETS": "presets",
    "UNCONFIRMED": "presets",
    "Phi3VProcessor": "processing",
    "build_tiny_tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

