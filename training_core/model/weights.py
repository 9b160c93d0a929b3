"""A checkpoint directory's weights checked against its config.json before anything is built from it.

A config that does not belong to its weights (a vocabulary size edited by hand, a config copied from another model)
would otherwise surface as transformers' size-mismatch RuntimeError after the model is built, or, with a million
layers claimed, as minutes of allocation. Here the config's sizes are bounded first, the weights' shapes are read (the
safetensors headers, or a pytorch_model*.bin onto the meta device: never the tensors' data), and every tensor the
model has is compared by shape with the one the files hold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from training_core.errors import UserError

# What a config may claim before anything is built (the largest real models are far below these).
CONFIG_BOUNDS = {"num_hidden_layers": 1024, "hidden_size": 65536, "intermediate_size": 262144,
                 "vocab_size": 4_000_000, "num_attention_heads": 1024}


class WeightsError(UserError):
    """A checkpoint directory whose config and weights do not go together, worded for the user (names the file)."""


def read_config(directory: Path) -> dict:
    """config.json as a dict, its sizes within CONFIG_BOUNDS."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable config ({exc})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: not a JSON object")
    for key, bound in CONFIG_BOUNDS.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= bound):
            raise WeightsError(f"{path}: {key} {value!r} is outside 1 .. {bound}")
    return config


def header_shapes(directory: Path) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Every tensor in the directory's weights: name -> (shape, file). From the *.safetensors headers alone; a
    checkpoint saved without safetensors (`pytorch_model*.bin`, as `save_pretrained(safe_serialization=False)` and
    older Trainers write) is read with torch's weights-only loader onto the meta device: shapes, no data, and never a
    pickle that runs code."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return _safetensors_shapes(files)
    files = sorted(directory.glob("pytorch_model*.bin"))
    if files:
        return _torch_shapes(files)
    raise WeightsError(f"{directory}: no weights (*.safetensors or pytorch_model*.bin)")


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    from safetensors import safe_open

    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():
                    shapes[key] = (tuple(int(d) for d in weights.get_slice(key).get_shape()), path)
        except Exception as exc:  # safetensors raises its own error types for truncated files and bad headers
            raise WeightsError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return shapes


def _torch_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    import torch

    shapes = {}
    for path in files:
        try:
            state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        except Exception as exc:  # a pickle that is not plain tensors, a truncated or damaged zip
            raise WeightsError(f"{path}: not a torch weights file that loads weights-only ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: not a state dict (name -> tensor)")
        for key, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                raise WeightsError(f"{path}: {key} is not a tensor")
            shapes[key] = (tuple(tensor.shape), path)
    return shapes


def stored_parameters(shapes: dict[str, tuple[tuple[int, ...], Path]]) -> int:
    return sum(math.prod(shape) for shape, _ in shapes.values())


def check_shapes(expected: dict[str, tuple[int, ...]], directory: Path) -> None:
    """Every tensor of `expected` (name -> shape, the model the config describes) that the files hold has that
    shape; otherwise a WeightsError naming the first mismatches, their files and the config."""
    shapes = header_shapes(directory)
    wrong = [(name, shape, shapes[name]) for name, shape in expected.items()
             if name in shapes and shapes[name][0] != tuple(shape)]
    if wrong:
        shown = "; ".join(f"{name} is {list(stored)} in {path.name}, the config makes it {list(shape)}"
                          for name, shape, (stored, path) in wrong[:4])
        more = f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""
        raise WeightsError(f"{directory / 'config.json'} does not belong to the weights beside it ({shown}{more}): "
                           "restore the checkpoint's own config.json (download it again)")
