"""The settings `tune` may change, and the candidates of one cell.

Only settings that leave what is trained unchanged: the engine (and FSDP2's resharding), activation checkpointing,
the per-device micro-batch (gradient accumulation keeps the global batch) and the attention kernel where the GPU has
flash attention (bf16). The global batch, optimizer, schedule, precision, strategy, data, seed and recipe revision
stay the cell's. A combination the spec refuses (LoRA on ZeRO, fp16 on FSDP2, another engine under the 2024-06
revision, a micro-batch that does not divide the batch, a GPU rule) is not a candidate; why is counted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydantic import ValidationError

from training_core.gpus import FLASH_ATTENTION, grid_reason, lookup
from training_core.spec import ENGINES, RunSpec

CHECKPOINTING = ("all", "every-2", "none")
MAX_MICRO_BATCH = 8
TUNED = ("engine", "fsdp2_reshard", "activation_checkpointing", "per_device_batch", "attention")


@dataclass(frozen=True)
class Candidate:
    spec: RunSpec
    settings: dict  # the tuned settings, resolved: engine, fsdp2_reshard, activation_checkpointing, per_device_batch,
    #                 attention

    @property
    def label(self) -> str:
        return describe(self.settings)


def settings_of(spec: RunSpec) -> dict:
    return {"engine": spec.train_engine, "fsdp2_reshard": bool(spec.fsdp2_reshard) if spec.train_engine == "fsdp2"
            else None, "activation_checkpointing": spec.checkpointing, "per_device_batch": spec.per_device_batch,
            "attention": spec.attention}


def describe(settings: dict) -> str:
    engine = settings["engine"] + (" (reshard)" if settings.get("fsdp2_reshard") else "")
    return (f"{engine}, ckpt {settings['activation_checkpointing']}, micro-batch {settings['per_device_batch']}, "
            f"{settings['attention']}")


def changes(recipe: dict, tuned: dict) -> str:
    """What a candidate changes from the recipe's cell, e.g. 'engine zero2 -> ddp; ckpt all -> none'."""
    names = {"activation_checkpointing": "ckpt", "per_device_batch": "micro-batch", "fsdp2_reshard": "reshard"}
    out = [f"{names.get(k, k)} {recipe[k]} -> {tuned[k]}" for k in TUNED if recipe.get(k) != tuned.get(k)
           and not (k == "fsdp2_reshard" and None in (recipe.get(k), tuned.get(k)))]  # said by the engine
    return "; ".join(out) or "nothing (the recipe's configuration)"


@dataclass
class Enumeration:
    candidates: list[Candidate]
    refused: Counter = field(default_factory=Counter)  # reason -> how many combinations


def micro_batches(spec: RunSpec, largest: int) -> list[int]:
    per_rank = spec.global_batch // spec.world_size
    return [b for b in range(1, min(per_rank, largest) + 1) if per_rank % b == 0]


def attentions(spec: RunSpec) -> list[str]:
    """The cell's kernel, and on a GPU that has flash attention (bf16 cells) sdpa and flash-attn both."""
    kinds = [spec.attention]
    gpu = lookup(spec.gpu) if spec.gpu.lower() != "cpu" else None
    if gpu is not None and gpu.flash and spec.precision == "bf16":
        kinds += [a for a in ("sdpa", FLASH_ATTENTION) if a not in kinds]
    return kinds


def enumerate_candidates(spec: RunSpec, engines=None, policies=None, largest: int = MAX_MICRO_BATCH) -> Enumeration:
    """Every valid combination of the tuned settings for the cell `spec` (its own first)."""
    base = spec.model_dump(mode="json")
    out = Enumeration([Candidate(spec, settings_of(spec))])
    seen = {spec.run_id}
    engine_choices = [(e, r) for e in (engines or ENGINES) for r in ((False, True) if e == "fsdp2" else (None,))]
    for engine, reshard in engine_choices:
        for policy in policies or CHECKPOINTING:
            for micro in micro_batches(spec, largest):
                for attention in attentions(spec):
                    fields = {**base, "engine": engine, "fsdp2_reshard": reshard or None,
                              "activation_checkpointing": policy, "gradient_checkpointing": policy != "none",
                              "per_device_batch": micro, "attention": attention}
                    try:
                        candidate = RunSpec.model_validate(fields)
                    except ValidationError as exc:
                        out.refused[_first_reason(exc)] += 1
                        continue
                    rule = grid_reason(candidate.gpu, candidate.precision, candidate.attention, candidate.strategy)
                    if rule:
                        out.refused[rule] += 1
                        continue
                    if candidate.run_id in seen:
                        continue
                    seen.add(candidate.run_id)
                    out.candidates.append(Candidate(candidate, settings_of(candidate)))
    return out


def _first_reason(exc: ValidationError) -> str:
    message = exc.errors()[0].get("msg", str(exc))
    return message.removeprefix("Value error, ").split(";")[0]
