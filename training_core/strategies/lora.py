"""`lora` and `qlora` (docs/RECIPE.md §1.5): peft LoRA on the recipe's targets, attached without wrapping the model
(peft's `inject_adapter_in_model`, what transformers' `add_adapter` does), trained with DDP."""

from __future__ import annotations

import torch
from torch import nn

from training_core.spec import RunSpec

from .base import Strategy
from .full import freeze_vision_for

LANGUAGE_TARGETS = ["qkv_proj", "o_proj", "down_proj", "gate_up_proj", "lm_head"]
VISION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "img_projection.0", "img_projection.2"]


def lora_targets(vision_frozen: bool, revision: str | None = None) -> list[str]:
    """The language model's linear layers and lm_head; CLIP and the projector too unless the tower is frozen (the
    2024-06 revision never targeted them, and froze the tower under LoRA)."""
    from training_core.recipe_revisions import get_revision

    vision = not vision_frozen and get_revision(revision).lora_vision_targets
    return LANGUAGE_TARGETS + (VISION_TARGETS if vision else [])


def lora_config(spec: RunSpec):
    from peft import LoraConfig  # imported on use: peft pulls in bitsandbytes (~1 s)

    return LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=lora_targets(spec.vision_frozen, spec.recipe_revision),
        init_lora_weights="gaussian",
    )


def prune_unused_vision_layers(model: nn.Module) -> None:
    """The recipe's `patch_clip_for_lora`: drop the CLIP layers after the feature layer and `post_layernorm`,
    which never reach the output (DDP with `find_unused_parameters=False` needs every parameter used)."""
    embedder = model.model.vision_embed_tokens
    vision_model = embedder.img_processor.vision_model
    vision_model.encoder.layers = vision_model.encoder.layers[: embedder.num_layers_used]
    vision_model.post_layernorm = nn.Identity()


def _prepare_lora(model: nn.Module, spec: RunSpec) -> nn.Module:
    from peft import inject_adapter_in_model

    prune_unused_vision_layers(model)
    model = inject_adapter_in_model(lora_config(spec), model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    if spec.vision_frozen:  # always under 2024-06
        freeze_vision_for(model, spec)
    return model


BNB_BLOCKSIZE = 64


def qlora_quantization(spec: RunSpec, config=None):
    """nf4, no double quantisation, compute dtype from the precision (the recipe). Linear layers narrower than
    bitsandbytes' 4-bit block (64 inputs) stay unquantised: only the tiny preset's 32-wide CLIP has them, and
    bitsandbytes' CPU inference path cannot pack them; the real model's layers are all 1024 wide or more."""
    from transformers import BitsAndBytesConfig

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.precision]
    skip = ["lm_head"]
    if config is not None and config.vision_config().hidden_size < BNB_BLOCKSIZE:
        skip.append("model.vision_embed_tokens.img_processor")  # a prefix: every CLIP layer
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                              llm_int8_skip_modules=skip)


LORA = Strategy("lora", _prepare_lora, requires=("peft",))
QLORA = Strategy("qlora", _prepare_lora, quantized=True, requires=("peft", "bitsandbytes"))
