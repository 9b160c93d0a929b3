"""Which trainable parameters get a gradient: checked in every cell's first optimizer step.

A tensor hook on each trainable parameter sees its gradient as autograd computes it, whatever engine trains it (DDP,
DeepSpeed ZeRO partitions gradients into its own buffers, so `param.grad` would say nothing there); under FSDP2,
whose backward runs on gathered copies of the sharded parameters, the reduced gradient shards are read before the
optimizer step instead (`observe_reduced`). A parameter
whose hook never fires got no gradient at all (e.g. decoder layers under reentrant checkpointing whose input does not
require grad: the 2024-06 recipe's frozen tower); one that saw only zeros did not learn either. Two kinds are
expected and kept apart, not flagged: parameters the forward never uses (CLIP's layers after the feature layer and its
`post_layernorm`, unused in the official model too) and LoRA `A` matrices while their `B` is still zero (peft's
init: the gradient of `A` is `B`-weighted, so exactly zero in the first step). Ranks are combined: a parameter counts
as having a gradient if any rank saw one. The naming and the flag's wording are plain functions (the report uses
them without torch).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nothing here calls torch itself: the report imports this module without it
    import torch
    from torch import nn

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
# how the flag names a group (the first matching prefix)
PARTS = (("model.layers.", "decoder"), ("lm_head", "LM head"), ("model.norm", "final norm"),
         ("model.vision_embed_tokens.wte", "token embedding"), ("model.embed_tokens", "token embedding"),
         ("model.vision_embed_tokens.img_projection", "projector"),
         ("model.vision_embed_tokens.img_processor", "vision tower"), ("model.vision_embed_tokens", "image embedder"))


def group_of(name: str) -> str:
    """`model.layers.3.mlp.down_proj.weight` -> `model.layers.*`; `lm_head.weight` -> `lm_head`."""
    match = _INDEX.search(name)
    if match:
        return name[:match.start()] + ".*"
    return name.rsplit(".", 1)[0] if "." in name else name


def part_of(name: str) -> str:
    return next((label for prefix, label in PARTS if name.startswith(prefix)), group_of(name))


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class GradientCoverage:
    """Hooks on every trainable parameter until `finish()`; `unused`: names the forward never uses; `before_step`: an
    engine's list of calls made before its optimizer step (FSDP2), where `observe_reduced` goes until `remove()`."""

    def __init__(self, model: nn.Module, unused: Iterable[str] = (), before_step: list | None = None):
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.unused = set(unused)
        named = dict(self.params)  # LoRA A matrices whose B is zero now: their gradient this step is exactly zero
        self.zero_b = {n for n in named if "lora_A" in n and _all_zero(named.get(n.replace("lora_A", "lora_B")))}
        self.seen = [False] * len(self.params)
        # each parameter's largest |gradient| as a 0-d tensor on its device: one reduction per gradient, no tensor of
        # its size (a bool tensor per parameter was ~1 B/parameter more at the backward's peak), read in one go in
        # finish() (not a device sync per parameter)
        self.peaks: list[torch.Tensor | None] = [None] * len(self.params)
        self._handles = [p.register_hook(self._hook(i)) for i, (_, p) in enumerate(self.params)]
        self._before_step = before_step
        if before_step is not None:
            before_step.append(self.observe_reduced)

    def _hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def record(grad: torch.Tensor) -> None:
            import torch

            self.seen[i] = True
            peak = torch.linalg.vector_norm(grad.detach(), ord=float("inf"))  # a reduction: max |g|, no |g| tensor
            self.peaks[i] = peak if self.peaks[i] is None else torch.maximum(self.peaks[i], peak)
        return record

    def observe_reduced(self) -> None:
        """Read each parameter's reduced gradient shard (`p.grad`, before the optimizer step): for FSDP2, whose
        backward computes gradients for the gathered parameters, not the sharded ones the hooks sit on. A rank whose
        shard of a parameter is empty sees it as zero; ranks are combined in `finish`."""
        import torch

        for i, (_, param) in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            local = getattr(grad, "_local_tensor", grad).detach()
            self.seen[i] = True
            peak = (torch.linalg.vector_norm(local, ord=float("inf")) if local.numel()
                    else torch.zeros((), device=local.device))
            self.peaks[i] = peak if self.peaks[i] is None else torch.maximum(self.peaks[i], peak)

    def _nonzero(self) -> list[bool]:
        """Whether each parameter's gradient had a non-zero value: the peaks read once per device."""
        import torch

        out = [False] * len(self.peaks)
        by_device: dict = {}
        for i, peak in enumerate(self.peaks):
            if peak is not None:
                by_device.setdefault(peak.device, []).append(i)
        for indices in by_device.values():
            values = torch.stack([self.peaks[i].float() for i in indices]).tolist()
            for i, value in zip(indices, values, strict=True):
                out[i] = value != 0  # NaN counts as non-zero: it is not an untouched parameter
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._before_step is not None and self.observe_reduced in self._before_step:
            self._before_step.remove(self.observe_reduced)

    def finish(self, gather: Callable[[object], list] | None = None) -> dict:
        """Remove the hooks and say what got no gradient (combined over ranks with `gather`, all_gather_object)."""
        self.remove()
        local = [(bool(seen), nz) for seen, nz in zip(self.seen, self._nonzero(), strict=True)]
        per_rank = gather(local) if gather is not None else [local]
        seen = [any(r[i][0] for r in per_rank) for i in range(len(local))]
        nonzero = [any(r[i][1] for r in per_rank) for i in range(len(local))]
        missing, zero, unused, lora_init = {}, {}, {}, {}
        for (name, p), got, moved in zip(self.params, seen, nonzero, strict=True):
            if got and moved:
                continue
            bucket = missing if not got else zero
            if name in self.unused:
                bucket = unused
            elif got and name in self.zero_b:
                bucket = lora_init
            group = group_of(name)
            bucket[group] = bucket.get(group, 0) + p.numel()
        untrained = {**missing}
        for group, n in zero.items():
            untrained[group] = untrained.get(group, 0) + n
        report = {
            "checked_at_step": 1,
            "trainable_params": sum(p.numel() for _, p in self.params),
            "no_gradient": missing,  # group -> parameters whose gradient was never computed
            "zero_gradient": zero,  # group -> parameters whose gradient was all zeros
            "expected": {"unused by the forward": unused, "LoRA A while B = 0 (init)": lora_init},
            "untrained_params": sum(untrained.values()),
        }
        report["flag"] = flag_text(untrained) if untrained else None
        return report


def _all_zero(param: torch.Tensor | None) -> bool:
    return param is not None and not bool(param.detach().ne(0).any())


def flag_text(untrained: dict[str, int]) -> str:
    """'decoder gets no gradient: 3.8B trainable parameters not trained' (parts by size)."""
    by_part: dict[str, int] = {}
    for group, n in untrained.items():
        by_part[part_of(group)] = by_part.get(part_of(group), 0) + n
    parts = sorted(by_part, key=lambda k: -by_part[k])
    verb = "gets" if len(parts) == 1 else "get"
    return f"{', '.join(parts)} {verb} no gradient: {human(sum(by_part.values()))} trainable parameters not trained"
