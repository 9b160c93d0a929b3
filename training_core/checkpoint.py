"""Periodic checkpoints and resume (the recipe cannot resume; this harness can).

`DIR/checkpoints/step-NNNNNNNN/` holds the engine state (trainable weights, optimiser, scheduler, loss scaler; or
DeepSpeed's own checkpoint), the training position and the loss series, and every rank's RNG states. A
`COMPLETE` marker is written last, after all ranks have saved, so an interrupted save is never resumed from."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from . import distributed

MARKER = "COMPLETE"


def checkpoint_root(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def latest(out_dir: Path) -> Path | None:
    done = sorted(p.parent for p in checkpoint_root(out_dir).glob(f"step-*/{MARKER}"))
    return done[-1] if done else None


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, out_dir: Path, step: int, position: dict) -> Path:
    directory = checkpoint_root(out_dir) / f"step-{step:08d}"
    directory.mkdir(parents=True, exist_ok=True)
    client = {"position": position}
    if hasattr(engine, "save"):  # DeepSpeed: every rank writes its own shard
        engine.save(directory, "engine", client)
    elif distributed.is_main():
        torch.save({"engine": engine.state_dict(), **client}, directory / "engine.pt")
    torch.save(_rng_state(), directory / f"rng-rank{distributed.rank()}.pt")
    distributed.barrier()
    if distributed.is_main():
        (directory / MARKER).write_text(f"step {step}\n")
    distributed.barrier()
    return directory


def load(engine, directory: Path) -> dict:
    """Restore the engine and this rank's RNG; returns the saved training position."""
    if hasattr(engine, "load"):
        client = engine.load(directory, "engine")
    else:
        state = torch.load(directory / "engine.pt", map_location="cpu", weights_only=False)
        engine.load_state_dict(state["engine"])
        client = state
    rng_file = directory / f"rng-rank{distributed.rank()}.pt"
    if not rng_file.exists():
        raise ValueError(f"{directory}: no RNG state for rank {distributed.rank()}: resume with the same world size")
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return client["position"]
