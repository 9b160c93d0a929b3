"""`full` and `frozen_vision`: DeepSpeed ZeRO-2 fine-tuning of all, or all but the image embedder's, parameters."""

from __future__ import annotations

from torch import nn

from training_core.spec import RunSpec

from .base import Strategy


def freeze_vision(model: nn.Module, keep_embedding: bool = False) -> None:
    """The recipe's `model.model.vision_embed_tokens.requires_grad_(False)`: CLIP, projector, separators and the
    shared `wte` (= the token embedding). `keep_embedding` re-enables the token embedding."""
    model.model.vision_embed_tokens.requires_grad_(False)
    if keep_embedding:
        model.model.embed_tokens.requires_grad_(True)


def _prepare_full(model: nn.Module, spec: RunSpec) -> nn.Module:
    model.requires_grad_(True)
    if spec.vision_frozen:
        freeze_vision(model, spec.train_embedding)
    return model


def _prepare_frozen(model: nn.Module, spec: RunSpec) -> nn.Module:
    model.requires_grad_(True)
    freeze_vision(model, spec.train_embedding)
    return model


FULL = Strategy("full", "deepspeed", _prepare_full, requires=("deepspeed",))
FROZEN_VISION = Strategy("frozen_vision", "deepspeed", _prepare_frozen, requires=("deepspeed",))
