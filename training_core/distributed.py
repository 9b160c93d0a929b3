"""Process-group helpers: works the same with one process (no torchrun) and many (gloo on CPU, nccl on GPUs)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init(device_type: str, always: bool = False) -> None:
    """Join the process group torchrun describes; with `always` (DeepSpeed needs one) a single process without
    torchrun gets a group of one on a free local port."""
    if dist.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not always:
        return
    if "MASTER_ADDR" not in os.environ:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _reduce(value: float, op, device: torch.device | None) -> float:
    if not dist.is_initialized():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device or torch.device("cpu"))
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())


def sum_all(value: float, device: torch.device | None = None) -> float:
    return _reduce(value, dist.ReduceOp.SUM if dist.is_initialized() else None, device)


def max_all(value: float, device: torch.device | None = None) -> float:
    return _reduce(value, dist.ReduceOp.MAX if dist.is_initialized() else None, device)


def min_all(value: float, device: torch.device | None = None) -> float:
    return _reduce(value, dist.ReduceOp.MIN if dist.is_initialized() else None, device)


def gather_objects(obj) -> list:
    """Every rank's object, in rank order (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_device(device_type: str) -> torch.device:
    """Where collective tensors live: the GPU under nccl, the CPU under gloo."""
    if device_type == "cuda" and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
