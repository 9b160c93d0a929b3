"""Periodic checkpoints and resume (the recipe cannot resume; this harness can), without running code from them.

`DIR/checkpoints/step-NNNNNNNN/` holds:
- `position.json`: the training position, the loss series, the metrics before training and the `run_id` of the
  cell that wrote it (a checkpoint of another spec is refused);
- `rng-rankN.json`: every rank's RNG states (Python, NumPy, torch, CUDA) as plain numbers;
- the engine state: `engine.pt` (trainable weights, optimiser, scheduler, loss scaler: tensors and plain data,
  read back with torch's weights-only loader, which refuses anything else), or DeepSpeed's own checkpoint under
  `engine/`, whose files are first scanned: DeepSpeed unpickles them fully, so a file that names any global outside
  `DEEPSPEED_GLOBALS` (e.g. a planted `os.system`) is refused before DeepSpeed reads it;
- `COMPLETE`, written last, after all ranks have saved, so an interrupted save is never resumed from. It lists every
  file of the checkpoint with its size, so a file cut short later (a full disk, a partial copy) is named as such.

`resume` takes the newest checkpoint that passes every check on every rank; a damaged or refused one is named in a
warning and the one before it is tried, so one bad save costs the steps since the previous checkpoint, not the run.
"""

from __future__ import annotations

import json
import os
import random
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from training_core.errors import UserError
from training_core.files import FileReadError, read_text

from . import distributed
from .result import write_json_atomic

MARKER = "COMPLETE"
# The classes a DeepSpeed ZeRO checkpoint pickles beside tensors (deepspeed 0.19: measured on ZeRO-2 fp32 and bf16
# checkpoints; the dynamic scaler is fp16's).
DEEPSPEED_GLOBALS = frozenset({
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
})


class CheckpointError(UserError):
    """A checkpoint that is not resumed from, and why."""


def checkpoint_root(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def complete(out_dir: Path) -> list[Path]:
    """The checkpoints whose save finished, newest first."""
    return sorted((p.parent for p in checkpoint_root(out_dir).glob(f"step-*/{MARKER}")), reverse=True)


def _manifest(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp")}


JSON_LIMIT = 64 * 2**20  # position.json holds the per-step series: megabytes for the longest runs


def only_regular_files(directory: Path) -> None:
    """A checkpoint holds only the regular files `save` wrote: a named pipe would block the read that resumes from
    it (the cell hung holding its group's lock), a link would read another file."""
    for path in sorted(directory.rglob("*")):
        mode = os.lstat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file (a named pipe or device)"
            raise CheckpointError(f"{path}: {kind}; a checkpoint holds only the files the harness saved: remove it "
                                  "and rerun without --resume")


def check_files(directory: Path) -> None:
    """Every file that `COMPLETE` lists is there at the size it was saved with (a marker of an older harness version,
    plain text, lists nothing)."""
    try:
        listed = json.loads(read_text(directory / MARKER, "checkpoint marker", JSON_LIMIT)).get("files")
    except (OSError, ValueError, AttributeError, FileReadError):
        return
    if not isinstance(listed, dict):
        return
    for name, size in listed.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (the save listed it, {size} bytes); the checkpoint is incomplete")
        actual = path.stat().st_size
        if actual != size:
            cut = "truncated" if actual < size else "changed"
            raise CheckpointError(f"{path}: {cut}: {actual} bytes, {size} when it was saved; the checkpoint is "
                                  "damaged (a full disk or a partial copy?)")


def _rng_state() -> dict:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(state), gauss],
            "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state().tolist(),
            "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save(engine, out_dir: Path, step: int, position: dict, run_id: str) -> Path:
    directory = checkpoint_root(out_dir) / f"step-{step:08d}"
    directory.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():  # saving again over a checkpoint (after resuming from an older one): not complete
        (directory / MARKER).unlink(missing_ok=True)  # until this save is
    distributed.barrier()
    if hasattr(engine, "save"):  # DeepSpeed: every rank writes its own shard
        engine.save(directory, "engine", {})
    else:  # every rank asks (FSDP2 gathers its shards: a collective; DDP hands back references), the main one writes
        state = engine.state_dict()
        if distributed.is_main():
            torch.save(state, directory / "engine.pt")
        del state
    if distributed.is_main():
        write_json_atomic(directory / "position.json", {**position, "run_id": run_id})
    write_json_atomic(directory / f"rng-rank{distributed.rank()}.json", _rng_state())
    distributed.barrier()
    if distributed.is_main():
        write_json_atomic(directory / MARKER, {"step": step, "files": _manifest(directory)})
    distributed.barrier()
    return directory


def check_deepspeed_files(directory: Path) -> None:
    """Refuse DeepSpeed checkpoint files that would make its (full) unpickling run anything but known classes."""
    for path in sorted(directory.rglob("*.pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - DEEPSPEED_GLOBALS
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint file ({type(exc).__name__}: {exc})") from None
        if unsafe:
            raise CheckpointError(f"refusing {path}: it names {sorted(unsafe)}, which a DeepSpeed checkpoint does not "
                                  "hold; loading it could run code. Remove the checkpoint and rerun without --resume")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(read_text(path, what, JSON_LIMIT))
    except (OSError, ValueError, FileReadError) as exc:
        raise CheckpointError(f"{path}: cannot read the {what} ({exc}); a checkpoint of an older harness version "
                              "or a damaged one: rerun without --resume") from None


def check_position(position, path: Path, total_steps: int | None) -> None:
    """The saved position is what `save` writes: a step inside the run (a step edited to 10^6 would end `ok` with
    nothing measured), whole-number epoch and batches consumed, the series as lists."""
    def bad(why: str):
        _damaged(path, why)

    if not isinstance(position, dict):
        bad("not a JSON object")
    for key in ("step", "epoch", "consumed"):
        value = position.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            bad(f"{key} is {value!r}, not a whole number >= 0" if key in position else f"no {key!r}")
    if position["step"] < 1 or (total_steps is not None and position["step"] >= total_steps):
        bad(f"step {position['step']} is not inside this cell's run (1 .. {total_steps - 1 if total_steps else '?'})")
    series = position.get("series")
    if not isinstance(series, dict) or not all(isinstance(v, list) for v in series.values()):
        bad("series is not an object of lists")
    if not isinstance(position.get("metrics_before", {}), dict):
        bad("metrics_before is not an object")


def _read_engine(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head[:1] == b"\x80":  # a pickle's protocol byte: torch's legacy format or a plain pickle.dump
            raise CheckpointError(f"refusing {path}: a bare pickle (torch's legacy format or pickle.dump), not the "
                                  "zip file this harness saves; unpickling it could run code. Remove the checkpoint "
                                  "and rerun without --resume")
        raise CheckpointError(f"{path}: not a complete torch file (truncated or damaged)")
    try:
        # mapped, not read: a rank that uses only part of it (FSDP2's other ranks: the scheduler) reads only that part
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the weights-only unpickler refuses anything but tensors and plain data
        raise CheckpointError(f"refusing {path}: not tensors and plain data only "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); remove the checkpoint and "
                              "rerun without --resume") from None


def _damaged(path: Path, why: str):
    raise CheckpointError(f"{path}: {why}; the checkpoint was edited or damaged: remove it and rerun without --resume")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ints(value, length: int | None = None, low: int | None = None, high: int | None = None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) and (low is None or low <= v)
                    and (high is None or v <= high) for v in value))


def check_rng(state, path: Path) -> None:
    """The RNG states are what `_rng_state` writes: Python's 625 words, NumPy's 624 keys, torch's byte state of this
    build's length, CUDA's per device or null (an empty object was a KeyError mid-resume)."""
    if not isinstance(state, dict):
        _damaged(path, "not a JSON object")
    python, numpy_state = state.get("python"), state.get("numpy")
    if not (isinstance(python, list) and len(python) == 3 and isinstance(python[0], int)
            and _ints(python[1], 625, 0, 2**32 - 1) and (python[2] is None or _is_number(python[2]))):
        _damaged(path, "python is not Python's RNG state ([version, 625 words, gauss])")
    if not (isinstance(numpy_state, list) and len(numpy_state) == 5 and numpy_state[0] == "MT19937"
            and _ints(numpy_state[1], 624, 0, 2**32 - 1) and isinstance(numpy_state[2], int)
            and 0 <= numpy_state[2] <= 624 and isinstance(numpy_state[3], int) and _is_number(numpy_state[4])):
        _damaged(path, "numpy is not NumPy's RNG state ([MT19937, 624 keys, pos, has_gauss, cached])")
    if not _ints(state.get("torch"), len(torch.get_rng_state()), 0, 255):
        _damaged(path, f"torch is not torch's RNG state ({len(torch.get_rng_state())} bytes)")
    cuda = state.get("cuda", "absent")
    if cuda is not None and not (isinstance(cuda, list) and all(_ints(s, None, 0, 255) for s in cuda)):
        _damaged(path, "cuda is neither null nor a list of byte states")


SERIES = ("loss", "step_time_s", "data_wait_s")


def check_series_and_metrics(position: dict, path: Path) -> None:
    """The loss series and the metrics before training become the row: only the series the loop keeps, as numbers
    (null for a non-finite one), no longer than the steps done; only `*_before` metrics, as numbers or null (an
    `mfu: 0.99` put there was shown as the cell's MFU)."""
    for name, values in position["series"].items():
        if name not in SERIES:
            _damaged(path, f"series {name!r} is not one the training loop keeps ({', '.join(SERIES)})")
        if len(values) > position["step"] or not all(v is None or _is_number(v) for v in values):
            _damaged(path, f"series {name!r} is not a list of at most {position['step']} numbers")
    for name, value in position.get("metrics_before", {}).items():
        if not str(name).endswith("_before"):
            _damaged(path, f"metrics_before holds {name!r}: only metrics measured before training (*_before) are "
                     "saved there")
        if not (value is None or _is_number(value)):
            _damaged(path, f"metrics_before {name!r} is {value!r}, not a number")


def check_engine_state(saved, current, path: Path, where: str = "") -> None:
    """A saved engine state has the shape of the engine's own: the same keys, tensors of the same shapes, an optimiser
    with the same parameter groups (an empty `{}` was a KeyError after the checkpoint had been chosen)."""
    name = where or "the engine state"
    if isinstance(current, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != current.shape:
            shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
            _damaged(path, f"{name} is {shape}, this cell's is {tuple(current.shape)}")
        return
    if isinstance(current, dict):
        if not isinstance(saved, dict):
            _damaged(path, f"{name} is {type(saved).__name__}, not an object")
        if "param_groups" in current and "state" in current:  # an optimiser: its state appears after the first step
            groups, ours = saved.get("param_groups"), current["param_groups"]
            if (not isinstance(saved.get("state"), dict) or not isinstance(groups, list) or len(groups) != len(ours)
                    or any(not isinstance(g, dict) or not isinstance(g.get("params"), list)
                           or len(g["params"]) != len(c["params"]) for g, c in zip(groups, ours, strict=True))):
                _damaged(path, f"{name} is not this cell's optimiser state (its parameter groups differ)")
            return
        missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        if missing or extra:
            _damaged(path, f"{name} " + "; ".join(
                part for part in (f"lacks {missing[:3]}" if missing else "", f"has unknown {extra[:3]}" if extra else "")
                if part))
        for key, value in current.items():
            check_engine_state(saved[key], value, path, f"{where}.{key}" if where else str(key))
        return
    if _is_number(current) and not _is_number(saved):
        _damaged(path, f"{name} is {saved!r}, not a number")


def _check(engine, directory: Path, run_id: str, total_steps: int | None, current: dict | None):
    """Everything about one checkpoint that can be checked without changing the engine: (position, engine state or
    None for DeepSpeed, this rank's RNG state). `current`: the engine's own state, the shape a saved one must have
    (an engine whose whole state only the main rank holds, FSDP2's, is checked there)."""
    only_regular_files(directory)
    position = _read_json(directory / "position.json", "training position")
    check_position(position, directory / "position.json", total_steps)
    check_series_and_metrics(position, directory / "position.json")
    if position.get("run_id") != run_id:
        raise CheckpointError(f"{directory} was written by cell {position.get('run_id')}, not by this cell "
                              f"({run_id}): resume only into the same spec; move the checkpoints away or rerun "
                              "without --resume")
    check_files(directory)
    rng_file = directory / f"rng-rank{distributed.rank()}.json"
    if not rng_file.exists():
        raise CheckpointError(f"{directory}: no RNG state for rank {distributed.rank()}: resume with the same world "
                              "size")
    rng = _read_json(rng_file, "RNG state")
    check_rng(rng, rng_file)
    if hasattr(engine, "load"):
        check_deepspeed_files(directory / "engine")
        return position, None, rng
    state = _read_engine(directory / "engine.pt")
    if distributed.is_main() or not getattr(engine, "state_on_main_only", False):
        check_engine_state(state, current, directory / "engine.pt")
    return position, state, rng


def _apply(engine, directory: Path, state: dict | None, rng: dict) -> None:
    if hasattr(engine, "load"):
        engine.load(directory, "engine")
    else:
        engine.load_state_dict(state)
    _set_rng_state(rng)


def resume(engine, out_dir: Path, run_id: str, total_steps: int | None = None,
           device: torch.device | None = None) -> tuple[dict | None, list[str]]:
    """Restore from the newest checkpoint that every rank finds sound; returns its position (None when there is no
    checkpoint) and what was said about each newer one that was passed over. When none is sound, the newest one's
    problem is raised."""
    skipped, first = [], None
    # the main rank's list, on every rank: ranks that see different checkpoints (a lagging network filesystem, or
    # node-local disks) then try the same ones in the same order and never wait on each other in max_all
    names = distributed.gather_objects([p.name for p in complete(out_dir)])[0]
    # the engine's own state, asked once by every rank before anything can fail on one of them (FSDP2 gathers it: a
    # collective a rank that had raised would leave the others waiting in)
    current = engine.state_dict() if names and not hasattr(engine, "load") else None
    for directory in (checkpoint_root(out_dir) / name for name in names):
        try:
            position, state, rng = _check(engine, directory, run_id, total_steps, current)
            problem = None
        except CheckpointError as exc:
            problem = exc
        if distributed.max_all(1.0 if problem else 0.0, device):  # one rank's damaged file is every rank's
            reason = str(problem) if problem else "another rank could not use it"
            first = first or CheckpointError(reason)
            skipped.append(f"not resuming from {directory.name}: {reason}")
            if distributed.is_main():
                print(f"warning: {skipped[-1]}; trying the checkpoint before it", file=sys.stderr)
            continue
        _apply(engine, directory, state, rng)
        return position, skipped
    if first is not None:
        raise first
    return None, skipped
