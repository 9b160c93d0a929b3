"""Recipe revisions: how a revision of the official fine-tuning recipe trains, as data (a registry by name).

The guide's speed tables and its DocVQA and Hateful Memes accuracy tables were committed with the first version of
the recipe (Phi-3 Cookbook commit d2cdae5, 2024-06-27; pins: transformers 4.38.1, accelerate 0.30.1, deepspeed
0.13.1, torch 2.1.2) and never re-measured; the NLVR2 table came after f1cc970 (2024-07-19, "fix LoRA /
freeze_vision_model / gradient checkpointing"), which changed how the tower is frozen and how checkpointing runs.

- `current` (f1cc970 on): the image embedder is frozen with `requires_grad_(False)`; decoder layers are checkpointed
  non-reentrantly (`use_reentrant: False`); LoRA may target CLIP and the projector.
- `2024-06` (d2cdae5): the image embedder's parameters get `requires_grad_(False)` and forward pre/post hooks turn
  grad mode off inside it. That module also computes the token
  embedding (`wte` is `embed_tokens`), so under a frozen tower the decoder's input does not require grad. Checkpointing
  is torch's default, the reentrant implementation, which then computes no gradient for any decoder layer and skips
  their recompute: only the final norm and `lm_head` train. transformers 4.38.1 made the embedding output require
  grad only for peft models (`model.add_adapter`), so LoRA still trained its decoder adapters. LoRA targets the
  language model only and forces the tower frozen ("can't lora CLIP is a known issue of Phi-3-V").

Pure data and arithmetic: the report, the FLOPs model and the spec read it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
    name: str
    cookbook_commit: str
    date: str
    freeze_with_no_grad_hooks: bool  # the frozen image embedder also runs with grad mode off inside it
    reentrant_checkpointing: bool  # torch's reentrant checkpoint (the default before use_reentrant=False)
    input_grads_for_peft_only: bool  # the embedding output requires grad only for peft models
    lora_vision_targets: bool  # LoRA may target CLIP and the projector (when the tower is not frozen)
    lora_forces_frozen_vision: bool
    summary: str


REVISIONS: dict[str, Revision] = {
    "current": Revision("current", "f1cc970", "2024-07-19", freeze_with_no_grad_hooks=False,
                        reentrant_checkpointing=False, input_grads_for_peft_only=False, lora_vision_targets=True,
                        lora_forces_frozen_vision=False,
                        summary="requires_grad_(False) freeze, non-reentrant checkpointing"),
    "2024-06": Revision("2024-06", "d2cdae5", "2024-06-27", freeze_with_no_grad_hooks=True,
                        reentrant_checkpointing=True, input_grads_for_peft_only=True, lora_vision_targets=False,
                        lora_forces_frozen_vision=True,
                        summary="no-grad hooks on the image embedder, reentrant checkpointing, LoRA on the language "
                                "model only"),
}


def get_revision(name: str | None) -> Revision:
    name = name or "current"
    if name not in REVISIONS:
        raise ValueError(f"unknown recipe revision {name!r}; choose one of {sorted(REVISIONS)}")
    return REVISIONS[name]


def decoder_gets_gradients(strategy: str, vision_frozen: bool, checkpointing: bool, revision: str | None) -> bool:
    """Whether the decoder layers get any gradient: not under the 2024-06 revision's frozen tower with reentrant
    checkpointing and no peft model (full / frozen_vision), where only the final norm and lm_head train."""
    rev = get_revision(revision)
    if not (rev.freeze_with_no_grad_hooks and rev.reentrant_checkpointing and vision_frozen and checkpointing):
        return True
    return strategy in ("lora", "qlora") and rev.input_grads_for_peft_only
