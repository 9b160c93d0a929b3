"""Doctor's probes (`python -m harness doctor`): what this machine can do, each found by running the real thing
where it is cheap (a tiny flash-attn call, a tiny 4-bit matmul, each SDPA backend on a tiny input, NVML's counters).
Each check says `ok`, `absent` (with what to do) or `fail` (with the error); on a machine without a GPU the GPU
checks say `absent` and what to do. The harness's doctor (harness/doctor.py) adds which cells of the shipped grids
run here."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training_core.capabilities import PACKAGES, import_problem, install_hint, version
from training_core.devices import Device
from training_core.model.compat import transformers_problem
from training_core.nvml import handle_for


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | absent | fail | info
    detail: str
    fix: str = ""


def _guard(name: str, probe: Callable[[], Check]) -> Check:
    """A check that raises is a failed check, not a crashed doctor."""
    try:
        return probe()
    except Exception as exc:
        return Check(name, "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# ------------------------------------------------------------------------------------------------ software
def software() -> list[Check]:
    cuda = torch.version.cuda
    checks = [Check("python", "info", platform.python_version()),
              Check("torch", "info", f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU build'})",
                    "" if cuda else "a CPU build: on an NVIDIA machine install the CUDA build of torch (make setup)")]
    for module in ("transformers", "peft", "accelerate", "pydantic"):
        problem = import_problem(module)
        checks.append(Check(module, "fail" if problem else "info", problem or (version(module) or "?"),
                            install_hint(module) if problem else ""))
    if (too_old := transformers_problem()) is not None:
        checks[2] = Check("transformers", "fail", too_old.split(";")[0], too_old.split("; ")[-1])
    if torch.backends.cudnn.is_available():
        checks.append(Check("cuDNN", "info", str(torch.backends.cudnn.version())))
    return checks


# ------------------------------------------------------------------------------------------------ GPUs
def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpus() -> list[Check]:
    if not torch.cuda.is_available():
        hint = ("torch is a CPU build: install the CUDA build (make setup on a Linux x86-64 NVIDIA machine)"
                if torch.version.cuda is None else "no CUDA device visible: check the driver (nvidia-smi) and "
                "CUDA_VISIBLE_DEVICES")
        return [Check("GPU", "absent", "no CUDA device", hint)]
    driver = "?"
    try:
        driver = _text(_nvml().nvmlSystemGetDriverVersion())
    except Exception:
        pass
    checks = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        checks.append(Check(f"GPU {i}", "ok", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                              f"sm_{props.major}{props.minor}, driver {driver}"))
    return checks


def cuda_build() -> list[Check]:
    """torch's CUDA build against the driver and the GPUs, read through NVML (which answers when torch sees no GPU
    because the driver is too old for the build): training_core/cuda_compat.py's two rules."""
    from training_core.cuda_compat import arch_problem, driver_problem

    built = torch.version.cuda
    if built is None:
        return []
    try:
        nvml = _nvml()
        driver = int(nvml.nvmlSystemGetCudaDriverVersion())
        capabilities = [tuple(int(v) for v in nvml.nvmlDeviceGetCudaComputeCapability(
            nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception as exc:  # no NVML (no driver, no nvidia-ml-py): nothing to compare
        return [Check("CUDA build", "info", f"torch built for CUDA {built}; the driver's CUDA is unknown "
                                            f"({type(exc).__name__})")]
    problem = driver_problem(built, driver)
    if problem is not None:
        return [Check("CUDA build", "fail", problem.why, problem.fix)]
    checks = [Check("CUDA build", "ok", f"torch built for CUDA {built}; the driver supports CUDA "
                                        f"{driver // 1000}.{(driver % 1000) // 10}")]
    arch_list = torch.cuda.get_arch_list() if torch.cuda.is_available() else []
    for capability in sorted(set(capabilities)):
        problem = arch_problem(capability, arch_list, built)
        if problem is not None:
            checks.append(Check(f"kernels for sm_{capability[0]}{capability[1]}", "fail", problem.why, problem.fix))
    return checks


def shared_memory() -> Check:
    """/dev/shm against what the recipe's loader holds there on this machine's GPUs (4 workers x 2 prefetched DocVQA
    batches of 17 crops per rank); too small, cells run with fewer workers (said in their rows), not at the recipe's
    speed (training_core/shm.py)."""
    from training_core import shm

    size = shm.shm_total()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if size is None:
        return Check("/dev/shm", "absent", "no shared-memory file system", "loader workers need /dev/shm: cells run "
                     "without workers")
    if gpus == 0:
        return Check("/dev/shm", "info", f"{size / 2**20:.0f} MiB (CPU cells use no loader workers)")
    need = shm.loader_need(4, 2, shm.batch_bytes(1, 16), gpus)
    if size < need:
        return Check("/dev/shm", "absent", f"{size / 2**20:.0f} MiB for {gpus} GPU(s): cells run with fewer loader "
                     "workers than the recipe's 4", shm.advice(size, need))
    return Check("/dev/shm", "ok", f"{size / 2**20:.0f} MiB, the recipe's loader needs about {need / 2**20:.0f} MiB "
                                   f"on {gpus} GPU(s)")


def bf16(device: Device) -> Check:
    if device.type != "cuda":
        return Check("bf16", "absent", "no CUDA device (CPU autocast runs bf16, slowly)",
                     "bf16 training needs an Ampere or newer GPU")
    if device.capability >= (8, 0) and torch.cuda.is_bf16_supported():
        return Check("bf16", "ok", f"{device.name} (sm_{device.capability[0]}{device.capability[1]})")
    return Check("bf16", "absent", f"{device.name} has no bf16", "use fp16 (the guide's V100 rows)")


# ------------------------------------------------------------------------------------------------ kernels
def _qkv(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(0)
    return tuple(torch.randn(1, 4, 16, 64, generator=g).to(device, dtype) for _ in range(3))  # (B, heads, L, d)


def _reference_attention(q, k, v) -> torch.Tensor:
    scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.float()


def sdpa_backends(device: Device) -> list[Check]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = _qkv(device.torch, dtype)
    expected = _reference_attention(q, k, v)
    checks = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        name = f"sdpa {backend.name.lower()}"

        def probe(backend=backend, name=name) -> Check:
            with sdpa_kernel([backend]):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            error = (out.float() - expected).abs().max().item()
            ok = error < (2e-2 if dtype == torch.bfloat16 else 1e-4)
            return Check(name, "ok" if ok else "fail", f"{str(dtype).removeprefix('torch.')} on {device.type}, "
                                                       f"max |diff| vs reference {error:.1e}")

        check = _guard(name, probe)
        if check.status == "fail" and ("No available kernel" in check.detail or "No viable backend" in check.detail):
            check = Check(name, "absent", f"no kernel for {device.type} here")
        checks.append(check)
    return checks


def flash_attn(device: Device) -> Check:
    problem = import_problem("flash_attn")
    if problem:
        fix = "make setup-gpu (compiles flash-attn against the installed torch; needs the CUDA toolkit)" \
            if device.type == "cuda" else "needs a CUDA GPU (Ampere or newer) and make setup-gpu there"
        return Check("flash-attn", "absent", problem, fix)
    if device.type != "cuda":
        return Check("flash-attn", "absent", f"{version('flash_attn')} installed, but no CUDA device to run it")

    def probe() -> Check:
        from flash_attn import flash_attn_func

        q, k, v = _qkv(device.torch, torch.bfloat16)
        out = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), causal=True).transpose(1, 2)  # (B, L, H, d)
        error = (out.float() - _reference_attention(q, k, v)).abs().max().item()
        return Check("flash-attn", "ok" if error < 2e-2 else "fail",
                     f"{version('flash_attn')}, tiny bf16 causal call max |diff| vs reference {error:.1e}")

    return _guard("flash-attn", probe)


def bitsandbytes(device: Device) -> Check:
    problem = import_problem("bitsandbytes")
    if problem:
        return Check("bitsandbytes", "absent", problem, f"{install_hint('bitsandbytes')} (QLoRA)")
    if device.type != "cuda":
        return Check("bitsandbytes", "absent", f"{version('bitsandbytes')} installed; its 4-bit CUDA kernels need "
                                               "a GPU (the CPU path runs QLoRA on the tiny preset)")

    def probe() -> Check:
        import bitsandbytes as bnb

        torch.manual_seed(0)
        layer = bnb.nn.Linear4bit(256, 128, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        dense = layer.weight.data.clone()
        layer = layer.to(device.torch)  # quantises on the move to the GPU
        x = torch.randn(4, 256, device=device.torch, dtype=torch.bfloat16)
        out = layer(x).float()
        dequantised = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        error = (out - x.float() @ dequantised.t()).abs().max().item()
        quant_error = (dequantised.cpu() - dense.float()).abs().mean().item()
        return Check("bitsandbytes", "ok" if error < 0.1 else "fail",
                     f"{version('bitsandbytes')}, nf4 matmul on {device.name}: max |diff| vs dequantised "
                     f"{error:.1e}, mean nf4 weight error {quant_error:.1e}")

    return _guard("bitsandbytes", probe)


def deepspeed_check() -> Check:
    problem = import_problem("deepspeed")
    if problem:
        return Check("deepspeed", "absent", problem, f"{install_hint('deepspeed')} (full and frozen_vision)")

    def probe() -> Check:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        return Check("deepspeed", "ok", f"{version('deepspeed')}, accelerator {accelerator.device_name()}, "
                                        f"communication backend {accelerator.communication_backend_name()}")

    return _guard("deepspeed", probe)


def nccl(device: Device) -> Check:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        fix = "" if device.type != "cuda" else "install a CUDA build of torch with NCCL"
        return Check("NCCL", "absent", "torch.distributed has no NCCL backend here (gloo is used on a CPU)", fix)
    if device.type != "cuda":
        return Check("NCCL", "info", "built into torch; used on CUDA devices (gloo on a CPU)")

    def probe() -> Check:
        found = torch.cuda.nccl.version()  # a tuple in current torch, an int in old releases
        return Check("NCCL", "ok", ".".join(map(str, found)) if isinstance(found, tuple) else str(found))

    return _guard("NCCL", probe)


def nvml(device: Device) -> Check:
    problem = import_problem("pynvml")
    if problem:
        return Check("NVML", "absent", problem, install_hint("pynvml"))
    if device.type != "cuda":
        return Check("NVML", "absent", "no CUDA device (memory and energy come from torch and RSS on a CPU)")

    def probe() -> Check:
        pynvml, handle = handle_for(device.index)  # NVML's own numbering: CUDA_VISIBLE_DEVICES mapped
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            energy = f"energy counter {pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000:.0f} J"
        except Exception as exc:
            energy = f"no energy counter ({type(exc).__name__}): energy per image will be absent"
        return Check("NVML", "ok", f"device memory {memory.used / 2**30:.1f} / {memory.total / 2**30:.1f} GiB "
                                   f"used, {energy}")

    return _guard("NVML", probe)


def optional_packages() -> list[Check]:
    """The packages only some cells or commands import (not covered above)."""
    shown = {"deepspeed", "bitsandbytes", "flash_attn", "pynvml", "peft"}
    out = []
    for module, package in PACKAGES.items():
        if module in shown:
            continue
        problem = import_problem(module)
        out.append(Check(package.pip, "absent" if problem else "ok", problem or (version(module) or "?"),
                         f"{install_hint(module)} ({package.needed_for})" if problem else ""))
    return out


# ------------------------------------------------------------------------------------------------ all
def run_probes(device: Device) -> list[Check]:
    return [*software(), *cuda_build(), *gpus(), shared_memory(), bf16(device), flash_attn(device), *sdpa_backends(device), bitsandbytes(device),
            deepspeed_check(), nccl(device), nvml(device), *optional_packages()]
