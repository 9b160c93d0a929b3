"""`full` and `frozen_vision`: fine-tuning of all, or all but the image embedder's, parameters (the recipe on DeepSpeed
ZeRO-2; any engine by `engine`)."""

from __future__ import annotations

import torch
from torch import nn

from training_core.recipe_revisions import get_revision
from training_core.spec import RunSpec

from .base import Strategy


class GradModeOff:
    """Forward pre/post hooks that run a module with grad mode off and give the caller back its own mode after it
    (a stack, so nested calls restore in order): the 2024-06 recipe's way of freezing the image embedder."""

    def __init__(self):
        self.saved: list[bool] = []

    def before(self, module, args) -> None:
        self.saved.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def after(self, module, args, output) -> None:
        torch.set_grad_enabled(self.saved.pop() if self.saved else True)


def freeze_vision(model: nn.Module, keep_embedding: bool = False, grad_mode_off: bool = False) -> None:
    """The recipe's `model.model.vision_embed_tokens.requires_grad_(False)`: CLIP, projector, separators and the
    shared `wte` (= the token embedding). `keep_embedding` re-enables the token embedding. `grad_mode_off` (the
    2024-06 revision): the embedder also runs with grad mode off, so its output (the decoder's input) does not
    require grad."""
    embedder = model.model.vision_embed_tokens
    embedder.requires_grad_(False)
    if keep_embedding:
        model.model.embed_tokens.requires_grad_(True)
    if grad_mode_off:
        hooks = GradModeOff()
        embedder.register_forward_pre_hook(hooks.before)
        embedder.register_forward_hook(hooks.after)


def freeze_vision_for(model: nn.Module, spec: RunSpec) -> None:
    """Freeze the tower the way the cell's recipe revision did."""
    freeze_vision(model, spec.train_embedding, get_revision(spec.recipe_revision).freeze_with_no_grad_hooks)


def _prepare_full(model: nn.Module, spec: RunSpec) -> nn.Module:
    model.requires_grad_(True)
    if spec.vision_frozen:
        freeze_vision_for(model, spec)
    return model


def _prepare_frozen(model: nn.Module, spec: RunSpec) -> nn.Module:
    model.requires_grad_(True)
    freeze_vision_for(model, spec)
    return model


FULL = Strategy("full", _prepare_full)
FROZEN_VISION = Strategy("frozen_vision", _prepare_frozen)
