"""The one catalogue of GPUs and the rules of what each can run (no torch: the harness reads it too).

Every place that needs a fact about a GPU reads it here: the grid's validity rules (`harness/grid/cells.py`), what a
cell's device can run (`capabilities.py`), the memory estimator's fit (`estimate/fit.py`), the peak-FLOPs table
(`trackers/flops.py`, keyed by the same short names), the results group and baseline key of a run, and doctor.

A GPU is known by its *short name* (`A100`, `V100`, `H100`): what a grid writes as `gpu:`, what results groups
(`8xA100`) and baseline keys (`tiny-A100x8`) carry. NVML and torch report longer names ('NVIDIA A100-SXM4-80GB',
'Tesla V100-SXM2-32GB', 'Quadro RTX 8000'); `short_name` maps them onto the catalogue.

What each GPU can do follows from its compute capability: bf16 and flash attention need Ampere (sm_80) or newer,
bitsandbytes' 4-bit kernels (QLoRA) Turing (sm_75) or newer. Memory is what `torch.cuda.get_device_properties`
reports for the common (largest) variant where it was read from a machine, else the data sheet's nominal size in
GiB (`memory_source` says which); smaller variants are named separately (`A100-40GB`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 2**30
BF16 = (8, 0)  # Ampere
FLASH = (8, 0)  # flash-attn 2: Ampere, Ada, Hopper
FOUR_BIT = (7, 5)  # bitsandbytes' 4-bit kernels: Turing or newer
FLASH_ATTENTION = "flash_attention_2"


@dataclass(frozen=True)
class Gpu:
    name: str  # the short name: grids, results groups, baseline keys, peak FLOPs
    capability: tuple[int, int]
    memory: int  # bytes
    memory_source: str  # "torch" (total_memory read on such a GPU) or "data sheet" (nominal GiB)
    pattern: str  # regular expression over the upper-cased NVML/torch name
    variants: tuple[tuple[str, int], ...] = ()  # (name, bytes) of smaller-memory variants, e.g. A100-40GB

    @property
    def bf16(self) -> bool:
        return self.capability >= BF16

    @property
    def flash(self) -> bool:
        return self.capability >= FLASH

    @property
    def four_bit(self) -> bool:
        return self.capability >= FOUR_BIT

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


def _nominal(gb: int) -> int:
    return gb * GIB


# Most specific first: the first entry whose pattern matches a device name wins (A100 before A10, H100 before H10x).
CATALOGUE: tuple[Gpu, ...] = (
    Gpu("V100", (7, 0), 34_089_730_048, "torch", r"\bV100S?\b", (("V100-16GB", 16_945_512_448),)),
    Gpu("T4", (7, 5), _nominal(16), "data sheet", r"\bT4\b"),
    Gpu("RTX8000", (7, 5), _nominal(48), "data sheet", r"\bRTX ?8000\b"),
    Gpu("A100", (8, 0), 85_899_345_920, "torch", r"\bA100\b", (("A100-40GB", 42_505_273_344),)),
    Gpu("A800", (8, 0), _nominal(80), "data sheet", r"\bA800\b", (("A800-40GB", _nominal(40)),)),
    Gpu("A10G", (8, 6), _nominal(24), "data sheet", r"\bA10G\b"),
    Gpu("A10", (8, 6), 23_677_960_192, "torch", r"\bA10\b"),
    Gpu("L40S", (8, 9), 47_697_362_944, "torch", r"\bL40S\b"),
    Gpu("H100", (9, 0), 85_520_809_984, "torch", r"\bH100\b"),
    Gpu("H800", (9, 0), _nominal(80), "data sheet", r"\bH800\b"),
    Gpu("H200", (9, 0), 150_754_820_096, "torch", r"\bH200\b"),
)
BY_NAME = {gpu.name: gpu for gpu in CATALOGUE}


def lookup(name: str) -> Gpu | None:
    """The catalogue entry of a short name ('A100', 'a100', 'A100-40GB') or a device name ('NVIDIA A100-SXM4-80GB')."""
    upper = name.strip().upper()
    if upper in BY_NAME:
        return BY_NAME[upper]
    for gpu in CATALOGUE:
        if any(variant.upper() == upper for variant, _ in gpu.variants):
            return gpu
    return next((gpu for gpu in CATALOGUE if re.search(gpu.pattern, upper)), None)


def short_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'Tesla V100-SXM2-32GB' -> 'V100', 'Quadro RTX 8000' -> 'RTX8000'; a GPU
    the catalogue does not know: its first word without vendor prefixes ('NVIDIA B200' -> 'B200')."""
    gpu = lookup(name)
    if gpu is not None:
        return gpu.name
    words = [w for w in re.split(r"\s+", name.strip()) if w.upper() not in ("NVIDIA", "TESLA", "QUADRO", "GEFORCE")]
    return (words[0] if words else name.strip()).split("-")[0] or "unknown"


def memory_bytes(name: str) -> int | None:
    """A GPU's memory by short or variant name ('A100' -> 80 GB, 'A100-40GB' -> 40 GB); None when unknown."""
    gpu = lookup(name)
    if gpu is None:
        return None
    upper = name.strip().upper()
    return next((size for variant, size in gpu.variants if variant.upper() == upper), gpu.memory)


def memory_names() -> list[str]:
    """Every name `memory_bytes` knows, variants included (for messages)."""
    return [n for gpu in CATALOGUE for n in (gpu.name, *(v for v, _ in gpu.variants))]


def rule_reason(precision: str, attention: str, strategy: str, *, device: str, capability: tuple[int, int] | None,
                cuda: bool) -> str | None:
    """Why a device cannot run this precision, attention and strategy, or None: the rules a grid's cells are checked
    against before they run (with the catalogue's capability) and a cell's device when it starts (with the one torch
    reports). `device` names it in the message; `capability` None: an unknown GPU, whose rules cannot be checked."""
    if attention == FLASH_ATTENTION and precision != "bf16":
        return f"flash attention needs bf16 (the guide's known issue: flash attention cannot be used with {precision})"
    if not cuda:
        if precision == "fp16":
            return "fp16 mixed precision needs a CUDA GPU; on a CPU it would silently train in fp32"
        if attention == FLASH_ATTENTION:
            return "flash attention needs a CUDA GPU"
        return None
    if capability is None:
        return None
    sm = f"sm_{capability[0]}{capability[1]}"
    if precision == "bf16" and capability < BF16:
        return f"bf16 needs an Ampere or newer GPU; {device} has no bf16 ({sm})"
    if attention == FLASH_ATTENTION and capability < FLASH:
        return f"flash attention needs an Ampere or newer GPU; {device} cannot run flash attention ({sm})"
    if strategy == "qlora" and capability < FOUR_BIT:
        return f"QLoRA's 4-bit kernels (bitsandbytes) need a Turing or newer GPU; {device} is {sm}"
    return None


def grid_reason(gpu: str, precision: str, attention: str, strategy: str) -> str | None:
    """The rules for a grid's cell on GPU `gpu` (a short name, or 'cpu'); an unknown GPU is checked only for the
    rules that hold on every GPU."""
    if gpu.lower() == "cpu":
        return rule_reason(precision, attention, strategy, device="cpu", capability=None, cuda=False)
    known = lookup(gpu)
    return rule_reason(precision, attention, strategy, device=gpu, capability=known.capability if known else None,
                       cuda=True)
