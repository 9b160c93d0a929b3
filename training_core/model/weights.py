"""A checkpoint directory's weights checked against its config.json before anything is built from it.

A config that does not belong to its weights (a vocabulary size edited by hand, a config copied from another model)
would otherwise surface as transformers' size-mismatch RuntimeError after the model is built, or, with a million
layers claimed, as minutes of allocation. Here the config's sizes are bounded first, the safetensors headers (not
the tensors) are read, and every tensor the model has is compared by shape with the one the files hold.
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
    """Every tensor in the directory's *.safetensors files: name -> (shape, file), from the headers alone."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{directory}: no *.safetensors weights")
    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():
                    shapes[key] = (tuple(int(d) for d in weights.get_slice(key).get_shape()), path)
        except Exception as exc:  # safetensors raises its own error types for truncated files and bad headers
            raise WeightsError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
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
