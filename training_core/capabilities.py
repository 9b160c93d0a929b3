"""What this machine can run: the one place that decides whether a cell is `unsupported` here, and why.

The cell entry point (`training_core.run`) asks `unsupported_reason(spec, device)` before building anything, and
`python -m harness doctor` asks the same function for every strategy x precision x attention of the shipped grids,
so what doctor says will run is what runs.

Three kinds of reasons:
- the device cannot do it (fp16 or flash attention on a CPU, bf16 or flash attention before Ampere, QLoRA's 4-bit
  kernels before Turing, a GPU cell on a machine without CUDA);
- the installed transformers is older than the model needs (`training_core.model.compat`);
- a package the cell needs is missing or fails to import (DeepSpeed for full / frozen_vision, peft for LoRA,
  bitsandbytes for QLoRA, flash-attn for flash attention, datasets for the recipe's Hugging Face datasets,
  Levenshtein for ANLS). Packages are checked by importing them, so a broken install counts as missing, and the
  reason names what to install.

The core itself needs only torch, transformers, peft, accelerate, pydantic, pyyaml, numpy, pillow, safetensors and
tokenizers; everything in `PACKAGES` is imported only where it is used.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from .devices import Device
from .gpus import rule_reason
from .model.compat import transformers_problem
from .spec import RunSpec


@dataclass(frozen=True)
class Package:
    module: str  # the import name
    pip: str  # what to install
    needed_for: str


PACKAGES: dict[str, Package] = {p.module: p for p in (
    Package("deepspeed", "deepspeed", "engines zero1, zero2 and zero3 (DeepSpeed; zero2 is the recipe's for full "
                                      "and frozen_vision)"),
    Package("peft", "peft", "lora and qlora"),
    Package("bitsandbytes", "bitsandbytes", "qlora (4-bit nf4 base)"),
    Package("flash_attn", "flash-attn", "flash attention (make setup-gpu)"),
    Package("datasets", "datasets", "data: hf (the recipe's Hugging Face datasets)"),
    Package("Levenshtein", "levenshtein", "ANLS (DocVQA accuracy)"),
    Package("av", "av", "UCF-101 video conversion"),
    Package("pynvml", "nvidia-ml-py", "GPU memory and energy counters (NVML)"),
    Package("matplotlib", "matplotlib", "report plots"),
    Package("jinja2", "jinja2", "reports"),
)}

@functools.cache
def import_problem(module: str) -> str | None:
    """None when `module` imports; else why not (missing, or installed but broken)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken install raises anything at import time
        return f"installed but fails to import ({type(exc).__name__}: {exc})"
    return None


def version(module: str) -> str | None:
    """The installed distribution's version of an importable module, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(PACKAGES[module].pip if module in PACKAGES else module)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_hint(module: str) -> str:
    package = PACKAGES.get(module)
    return f"pip install {package.pip if package else module}"


def required_packages(spec: RunSpec) -> tuple[str, ...]:
    """The optional packages a cell imports, in the order a user would install them."""
    from .strategies import get_strategy

    needed = (["deepspeed"] if spec.train_engine in ("zero1", "zero2", "zero3") else []) + list(
        get_strategy(spec.strategy).requires)
    if spec.attention == "flash_attention_2":
        needed.append("flash_attn")
    if spec.data == "hf":
        needed.append("datasets")
    if spec.mode == "accuracy" and spec.task in ("docvqa", "docvqa_full"):
        needed.append("Levenshtein")
    return tuple(needed)


def missing_package_reason(spec: RunSpec) -> str | None:
    for module in required_packages(spec):
        problem = import_problem(module)
        if problem is not None:
            package = PACKAGES[module]
            return (f"{package.needed_for} needs the {package.pip} package, which cannot be imported here "
                    f"({problem}); install it: {install_hint(module)}")
    return None


def device_reason(spec: RunSpec, device: Device) -> str | None:
    """Why this device cannot run the spec's precision, attention or strategy (None: it can): the catalogue's rules
    (training_core/gpus.py, the same the grid checks) with the capability torch reports."""
    reason = rule_reason(spec.precision, spec.attention, spec.strategy, device=device.name,
                         capability=device.capability, cuda=device.type == "cuda")
    if reason is None and spec.gpu != "cpu" and device.type == "cpu":
        wanted = "this machine's GPUs" if spec.gpu == "auto" else f"{spec.gpu} GPUs"
        return f"the cell is for {wanted} but no CUDA device is available here"
    return reason


def unsupported_reason(spec: RunSpec, device: Device) -> str | None:
    """Why the cell cannot run on `device` with the packages installed here, or None when it can."""
    return transformers_problem() or device_reason(spec, device) or missing_package_reason(spec)
