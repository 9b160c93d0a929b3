"""Live bytes of every tensor storage created while the tracker is active (fake tensors included): the running total
by category, its peak, the phase of the peak and the categories at that moment.

Each storage is counted once (views share it) from the op that created it until its Python object dies (storages
keep their Python object while alive, so a weak reference sees the free). Categories are set at creation from what
the trace is doing (weights while the model is built, activations in forward and backward, temporaries in the
optimizer step) and corrected when a tensor's role becomes known: a parameter's accumulated gradient becomes
`gradients`, the optimizer's state tensors `optimizer states` (also in the peak's breakdown, for those created before
the peak). Sizes are rounded up as the CUDA caching allocator rounds a block (512 bytes).
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES = ("weights", "inputs", "gradients", "optimizer states", "activations", "temporaries")
BLOCK = 512


def rounded(n: int, block: int = BLOCK) -> int:
    return -(-n // block) * block if n else 0


class PeakTracker(TorchDispatchMode):
    def __init__(self, block: int = BLOCK):
        super().__init__()
        self.block = block
        self.live: dict[int, list] = {}  # id(storage) -> [bytes, category, allocation number]
        self._refs: dict[int, weakref.ref] = {}
        self.by_category: Counter = Counter()
        self.total = 0
        self.allocations = 0
        self.phase = "setup"
        self.category = "weights"
        self.peak = 0
        self.peak_phase = "setup"
        self.peak_at = 0  # the allocation number at the peak
        self.peak_categories: dict[str, int] = {}
        self.phase_peaks: dict[str, tuple[int, dict[str, int]]] = {}  # phase -> (its peak, categories then)

    # ------------------------------------------------------------------ phases
    def enter(self, phase: str, category: str) -> None:
        self.phase, self.category = phase, category

    # ------------------------------------------------------------------ storages
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out

    def track(self, tensor: torch.Tensor, category: str | None = None) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.live:
            return
        size = rounded(storage.nbytes(), self.block)
        self.allocations += 1
        cat = category or self.category
        self.live[key] = [size, cat, self.allocations]
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        self.total += size
        self.by_category[cat] += size
        if self.total > self.peak:
            self.peak, self.peak_phase, self.peak_at = self.total, self.phase, self.allocations
            self.peak_categories = dict(self.by_category)
        if self.total > self.phase_peaks.get(self.phase, (0, {}))[0]:
            self.phase_peaks[self.phase] = (self.total, dict(self.by_category))

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        self._refs.pop(key, None)
        if entry is not None:
            self.total -= entry[0]
            self.by_category[entry[1]] -= entry[0]

    def reclassify(self, tensor: torch.Tensor, category: str) -> None:
        """`tensor`'s storage plays `category` from now on (and in the peak's breakdown, if it was live then)."""
        entry = self.live.get(id(tensor.untyped_storage()))
        if entry is None or entry[1] == category:
            return
        size, old, number = entry
        self.by_category[old] -= size
        self.by_category[category] += size
        entry[1] = category
        if number <= self.peak_at and self.peak_categories.get(old, 0) >= size:  # live then, as it is now
            self.peak_categories[old] -= size
            self.peak_categories[category] = self.peak_categories.get(category, 0) + size

    def breakdown(self, phase: str | None = None) -> dict[str, int]:
        """Bytes by category at the peak (of `phase`, when given)."""
        cats = self.peak_categories if phase is None else self.phase_peaks.get(phase, (0, {}))[1]
        return {c: int(cats.get(c, 0)) for c in CATEGORIES}
