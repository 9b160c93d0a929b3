"""NVML handles in CUDA's numbering. NVML ignores `CUDA_VISIBLE_DEVICES` and counts every GPU of the machine, so
CUDA device 0 under `CUDA_VISIBLE_DEVICES=4,5` is NVML's device 4: asking NVML for index 0 would measure another
GPU (a shared box, SLURM without device cgroups). Entries are read as CUDA reads them: indices, GPU UUIDs or their
unique prefixes (`GPU-...`), MIG UUIDs (`MIG-...`, a handle of that MIG instance); CUDA stops at the first entry it
cannot use, and so does this. pynvml is imported on use; no torch here (the runner and doctor import it too)."""

from __future__ import annotations

import os


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_entries() -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (None: the variable is unset, every GPU is visible)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [e.strip() for e in value.split(",") if e.strip()]


def visible_handles(pynvml) -> list:
    """NVML handles of the GPUs CUDA sees, in CUDA's order (CUDA device i is element i)."""
    count = pynvml.nvmlDeviceGetCount()
    entries = visible_entries()
    if entries is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = None
    handles = []
    for entry in entries:
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < count:
                break
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(index))
        elif entry.startswith("MIG-"):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(entry))
        else:
            if uuids is None:
                uuids = [_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
            prefix = entry if entry.startswith("GPU-") else f"GPU-{entry}"
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(prefix)]
            if len(matches) != 1:  # unknown or ambiguous: CUDA stops here
                break
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(matches[0]))
    return handles


def handle_for(cuda_index: int):
    """(pynvml, the NVML handle of CUDA device `cuda_index`); raises when NVML or that device cannot be had."""
    import pynvml

    pynvml.nvmlInit()
    handles = visible_handles(pynvml)
    if not 0 <= cuda_index < len(handles):
        raise LookupError(f"CUDA device {cuda_index} has no NVML device (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, {len(handles)} visible)")
    return pynvml, handles[cuda_index]


def visible_names() -> list[str]:
    """The names of the GPUs CUDA sees, through NVML; [] without a driver or NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [_text(pynvml.nvmlDeviceGetName(h)) for h in visible_handles(pynvml)]
    except Exception:  # no driver / no NVML: no GPUs
        return []
