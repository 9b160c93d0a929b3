"""Does this torch build fit this machine's driver and GPUs? (issue 32, item 1)

Two rules, as CUDA states them:
- the driver must support the CUDA major version torch was built for (minor-version compatibility covers the minor
  versions within a major): torch built for CUDA 13.0 on an R535 driver (CUDA 12.2) sees no GPU at all, and every GPU
  cell ends `unsupported: no CUDA device`;
- torch must carry code for the GPU's architecture: a cubin for the same major and a minor at or below the GPU's, or
  PTX of an architecture at or below it (JIT-compiled). CUDA 13 builds dropped Volta (sm_70): the guide's V100 table
  needs a CUDA 12 build.

Pure functions of the versions (no torch, no NVML here): doctor's probe feeds them (training_core/probes.py), and the
tests feed them what real machines report.
"""

from __future__ import annotations

from typing import NamedTuple

# the PyTorch wheel index per CUDA, for the fix (make setup CUDA=...)
CHOICES = {12: "cu126", 13: "cu130"}
# the last driver branch of each CUDA major (what to install, in words)
DRIVERS = {12: "R525 or newer", 13: "R580 or newer"}


class Problem(NamedTuple):
    """What does not fit (`why`) and what to do (`fix`), kept apart for doctor's two columns; `str()` is the
    sentence."""

    why: str
    fix: str
    joint: str = "; "

    def __str__(self) -> str:
        return f"{self.why}{self.joint}{self.fix}"


def _major_minor(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def driver_problem(torch_cuda: str | None, driver_cuda: int | None) -> Problem | None:
    """`torch_cuda`: torch.version.cuda ("13.0"; None for a CPU build); `driver_cuda`: NVML's
    nvmlSystemGetCudaDriverVersion (12020 for CUDA 12.2). None when they fit or when either is unknown."""
    if torch_cuda is None or not driver_cuda:
        return None
    built = _major_minor(torch_cuda)
    driver = (driver_cuda // 1000, (driver_cuda % 1000) // 10)
    if driver[0] >= built[0]:
        return None
    choice = CHOICES.get(driver[0])
    fix = (f"install torch built for CUDA {driver[0]} (make setup CUDA={choice})" if choice
           else f"install a torch build for CUDA {driver[0]}")
    return Problem(f"torch is built for CUDA {torch_cuda}, but the driver supports CUDA up to {driver[0]}.{driver[1]}: "
                   "torch sees no GPU", f"{fix}, or update the driver to {DRIVERS.get(built[0], 'a newer branch')}")


def arch_problem(capability: tuple[int, int], arch_list: list[str], torch_cuda: str | None) -> Problem | None:
    """`capability`: the GPU's (major, minor); `arch_list`: torch.cuda.get_arch_list() ("sm_80", "compute_90", ...).
    None when torch has code the GPU runs (or the list is empty: not known)."""
    if not arch_list:
        return None
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit() or len(number) < 2:
            continue
        a_major, a_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return None
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return None
    shown = ", ".join(arch_list)
    hint = (" (CUDA 13 builds dropped Volta: make setup CUDA=cu126)" if major == 7 and torch_cuda
            and _major_minor(torch_cuda)[0] >= 13 else "")
    return Problem(f"this GPU is sm_{major}{minor}, but torch {('(CUDA ' + torch_cuda + ') ') if torch_cuda else ''}"
                   f"carries code only for {shown}{hint}", f"install a torch build that includes sm_{major}{minor}",
                   ": ")
