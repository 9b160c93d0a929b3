"""Model presets: the official configurations and a tiny one with every structural path of the real model.

- `phi-3.5-vision`: the exact values of `microsoft/Phi-3.5-vision-instruct`'s config.json (docs/RECIPE.md §2.1).
- `phi-3-vision-128k`: `microsoft/Phi-3-vision-128k-instruct`. Same architecture; its LongRoPE factors and
  `sliding_window` come from a public copy of the config, not from the checkpoint itself (see UNCONFIRMED): a
  checkpoint directory's config.json always overrides a preset when weights are loaded.
- `tiny`: 2 decoder layers of width 64, a 3-layer CLIP of width 32 on 56x56 crops with 14x14 patches (a 4x4 patch
  grid, 2x2 tokens per crop after the merge), LongRoPE with 8 factors, HD crops, separators and the MLP projector.
  Its vocabulary is the tiny byte-level tokenizer's (`tokenizer.py`).
- `wide-2l`: the real widths (a decoder of width 3072 with the 32064-row vocabulary, CLIP ViT-L/14-336 of width 1024
  on 336x336 crops) but 2 decoder and 2 CLIP layers: 0.45B parameters, the memory estimator's larger check on a CPU
  (one step in tens of seconds). Its special tokens are the byte-level tokenizer's, like every preset's.
"""

from __future__ import annotations

import copy
from typing import Any

from .rope_factors import PHI3_VISION_128K_LONG, PHI3_VISION_128K_SHORT, PHI35_VISION_LONG, PHI35_VISION_SHORT
from .tiny_vocab import TINY_SPECIAL_IDS, TINY_VOCAB_SIZE

CLIP_L14_336_NAME = "openai/clip-vit-large-patch14-336"

# The CLIP architecture the official remote code builds in code for `openai/clip-vit-large-patch14-336`
# (docs/RECIPE.md §2.5). Weights come from the Phi checkpoint, never from OpenAI's.
CLIP_VIT_L14_336: dict[str, Any] = {
    "hidden_size": 1024,
    "image_size": 336,
    "patch_size": 14,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "projection_dim": 768,
    "num_channels": 3,
}

_PHI3_V_COMMON: dict[str, Any] = {
    "architectures": ["Phi3VForCausalLM"],
    "hidden_size": 3072,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 8192,
    "hidden_act": "silu",
    "vocab_size": 32064,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "attention_dropout": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32000,
    "img_processor": {
        "name": "clip_vision_model",
        "model_name": "openai/clip-vit-large-patch14-336",
        "image_dim_out": 1024,
        "num_img_tokens": 144,
    },
    "embd_layer": {
        "embedding_cls": "image",
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
        "use_hd_transform": True,
        "with_learnable_separator": True,
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "phi-3.5-vision": {
        **_PHI3_V_COMMON,
        "sliding_window": 262144,
        "rope_scaling": {"type": "su", "short_factor": PHI35_VISION_SHORT, "long_factor": PHI35_VISION_LONG},
    },
    "phi-3-vision-128k": {
        **_PHI3_V_COMMON,
        "sliding_window": 131072,
        "rope_scaling": {"type": "su", "short_factor": PHI3_VISION_128K_SHORT, "long_factor": PHI3_VISION_128K_LONG},
    },
    "tiny": {
        **_PHI3_V_COMMON,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": TINY_VOCAB_SIZE,
        "rope_scaling": {
            "type": "su",
            "short_factor": [1.0, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0, 8.0],
            "long_factor": [1.1, 1.5, 2.5, 5.0, 10.0, 20.0, 40.0, 64.0],
        },
        "sliding_window": 262144,
        "bos_token_id": TINY_SPECIAL_IDS["<s>"],
        "eos_token_id": TINY_SPECIAL_IDS["</s>"],
        "pad_token_id": TINY_SPECIAL_IDS["<|endoftext|>"],
        "img_processor": {
            "name": "clip_vision_model",
            "model_name": "tiny-clip-56",
            "image_dim_out": 32,
            "num_img_tokens": 4,
            "vision_config": {
                "hidden_size": 32,
                "image_size": 56,
                "patch_size": 14,
                "intermediate_size": 64,
                "num_attention_heads": 2,
                "num_hidden_layers": 3,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
                "attention_dropout": 0.0,
                "initializer_factor": 1.0,
                "initializer_range": 0.02,
                "projection_dim": 32,
                "num_channels": 3,
            },
        },
    },
    "wide-2l": {
        **_PHI3_V_COMMON,
        "num_hidden_layers": 2,
        "sliding_window": 262144,
        "rope_scaling": {"type": "su", "short_factor": PHI35_VISION_SHORT, "long_factor": PHI35_VISION_LONG},
        "bos_token_id": TINY_SPECIAL_IDS["<s>"],
        "eos_token_id": TINY_SPECIAL_IDS["</s>"],
        "pad_token_id": TINY_SPECIAL_IDS["<|endoftext|>"],
        "img_processor": {
            **_PHI3_V_COMMON["img_processor"],
            "model_name": "wide-2l-clip-336",
            "vision_config": {**CLIP_VIT_L14_336, "num_hidden_layers": 2},
        },
    },
}

# Values a preset carries that were not confirmed from the checkpoint itself.
UNCONFIRMED: dict[str, list[str]] = {
    "phi-3.5-vision": [],
    "phi-3-vision-128k": [
        "rope_scaling.short_factor / long_factor and sliding_window: read from a public copy of the config.json, "
        "not from the checkpoint; a checkpoint directory's config.json overrides them",
    ],
    "tiny": [],
    "wide-2l": [],
}


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
