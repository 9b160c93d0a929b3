"""The environment a result came from: code version, library versions, devices, world size."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "flash-attn", "tokenizers")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    root = path or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def _gpus() -> tuple[list[dict], str | None]:
    if not torch.cuda.is_available():
        return [], None
    gpus = [{"name": torch.cuda.get_device_name(i), "memory_bytes": torch.cuda.get_device_properties(i).total_memory}
            for i in range(torch.cuda.device_count())]
    driver = None
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:
        pass
    return gpus, driver


def capture(world_size: int) -> dict:
    sha, dirty = git_state()
    gpus, driver = _gpus()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        **{name.replace("-", "_"): _version(name) for name in LIBRARIES},
        "cuda": torch.version.cuda,
        "driver": driver,
        "gpus": gpus,
        "gpu_count": len(gpus),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "cpus_allowed": len(os.sched_getaffinity(0)),  # the CPUs this process may run on (affinity, cgroups)
        "hostname": socket.gethostname(),
        "world_size": world_size,
        "distributed_backend": _backend(),
    }


def _backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def main(argv: list[str] | None = None) -> int:
    """`python -m training_core.env --world-size N`: the environment as JSON on stdout. The runner asks for it this
    way, in a process of its own, so the runner itself never imports torch."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m training_core.env", description=main.__doc__)
    parser.add_argument("--world-size", type=int, default=1)
    print(json.dumps(capture(parser.parse_args(argv).world_size), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
