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
                 "vocab_size": 4_000_000, "num_attention_heads": 1024, "num_key_value_heads": 1024,
                 "max_position_embeddings": 16_777_216, "original_max_position_embeddings": 16_777_216}
# The same for the CLIP tower described inside `img_processor.vision_config` (the tiny preset's form).
VISION_BOUNDS = {"num_hidden_layers": 1024, "hidden_size": 65536, "intermediate_size": 262144,
                 "num_attention_heads": 1024, "image_size": 4096, "patch_size": 4096, "num_channels": 16,
                 "projection_dim": 65536}
# The activations the two towers can be built with (the decoder's silu, CLIP's quick_gelu and their kin); anything
# else was a KeyError (or, spelt `os.system`, an attempt) deep inside transformers.
ACTIVATIONS = frozenset({"silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu",
                         "tanh"})


class WeightsError(UserError):
    """A checkpoint directory whose config and weights do not go together, worded for the user (names the file)."""


def read_config(directory: Path) -> dict:
    """config.json as a dict, checked by `check_config`. Read as a regular file of bounded size."""
    from training_core.files import FileReadError, read_text

    path = directory / "config.json"
    try:
        config = json.loads(read_text(path, "model config", limit=MAX_CONFIG_BYTES))
    except FileReadError as exc:
        raise WeightsError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable config ({exc})") from None
    check_config(config, path)
    return config


MAX_CONFIG_BYTES = 4 * 1024 * 1024


def _bounded(block: dict, bounds: dict, where: str, path: Path) -> None:
    for key, bound in bounds.items():
        value = block.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= bound):
            raise WeightsError(f"{path}: {where}{key} {value!r} is outside 1 .. {bound}")
    heads, width = block.get("num_attention_heads"), block.get("hidden_size")
    if heads and width and width % heads:
        raise WeightsError(f"{path}: {where}hidden_size {width} is not a multiple of {where}num_attention_heads "
                           f"{heads} (each head gets hidden_size / heads channels)")
    kv = block.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise WeightsError(f"{path}: {where}num_attention_heads {heads} is not a multiple of {where}"
                           f"num_key_value_heads {kv}")
    act = block.get("hidden_act")
    if act is not None and act not in ACTIVATIONS:
        raise WeightsError(f"{path}: {where}hidden_act {act!r} is not an activation this model is built with "
                           f"({', '.join(sorted(ACTIVATIONS))})")


def check_config(config, path: Path) -> None:
    """Every size a model config claims, at the top and nested (`img_processor.vision_config`), within bounds and
    consistent (heads divide the width, known activations, RoPE factors one per rotary frequency): one check for
    every config read (build, preflight, the estimator, export), so that a tampered config is a WeightsError
    naming the file and key, not minutes of allocation or a KeyError inside transformers."""
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: not a JSON object")
    _bounded(config, CONFIG_BOUNDS, "", path)
    image = config.get("img_processor")
    if image is not None and not isinstance(image, dict):
        raise WeightsError(f"{path}: img_processor is {type(image).__name__}, not an object")
    vision = (image or {}).get("vision_config")
    if vision is not None:
        if not isinstance(vision, dict):
            raise WeightsError(f"{path}: img_processor.vision_config is {type(vision).__name__}, not an object")
        _bounded(vision, VISION_BOUNDS, "img_processor.vision_config.", path)
    heads, width = config.get("num_attention_heads"), config.get("hidden_size")
    half = (width // heads) // 2 if heads and width else None
    for block_name in ("rope_scaling", "rope_parameters"):
        block = config.get(block_name)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise WeightsError(f"{path}: {block_name} is {type(block).__name__}, not an object")
        for key in ("long_factor", "short_factor"):
            factors = block.get(key)
            if factors is None:
                continue
            if not (isinstance(factors, list) and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                      and math.isfinite(f) and f > 0 for f in factors)):
                raise WeightsError(f"{path}: {block_name}.{key} is not a list of positive numbers")
            if half is not None and len(factors) != half:
                raise WeightsError(f"{path}: {block_name}.{key} has {len(factors)} factors; the model's head size "
                                   f"{width // heads} needs {half} (one per rotary frequency)")


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
