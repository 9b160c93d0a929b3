"""Fine-tuning strategies, a registry by name, as the recipe does them (docs/RECIPE.md §1.4-1.7):

- `full`: every parameter trains; DeepSpeed ZeRO-2 with the recipe's settings (no offload).
- `frozen_vision`: the image embedder is frozen (CLIP, projector, separators and, through the shared `wte`, the
  token embedding; `train_embedding` keeps the embedding trainable); DeepSpeed ZeRO-2 like `full`.
- `lora`: peft LoRA (gaussian init) on the decoder and LM head, and on CLIP and the projector unless the vision tower
  is frozen; the unused CLIP layers are removed first, as the recipe's `patch_clip_for_lora`; DDP, not DeepSpeed.
- `qlora`: `lora` over a 4-bit nf4 base (bitsandbytes), compute dtype from the precision.
"""

from __future__ import annotations

from .base import Strategy
from .full import FROZEN_VISION, FULL
from .lora import LORA, QLORA

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (FULL, FROZEN_VISION, LORA, QLORA)}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
