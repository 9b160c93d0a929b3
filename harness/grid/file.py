"""Grid files (`matrices/*.yaml`): validate, expand and constrain into cells.

```yaml
name: a100_speed                    # the results folder name (results/runs/<name>/...)
description: ...
hardware: {gpu: A100, gpus_per_node: 8, nodes: 1}
defaults: {task: docvqa, strategy: full, ...}   # RunSpec fields shared by every cell
axes: {precision: [fp32, bf16], attention: [eager, sdpa]}   # crossed
include:                            # extra cells (over the defaults), e.g. the documented rows one by one
  - {strategy: lora, attention: flash_attention_2, reference: a100/lora/1n/fa}
exclude:                            # rules: a cell matching every key is listed as excluded with the reason
  - {match: {strategy: qlora, precision: fp32}, reason: ...}
limits: {timeout_s: 1800, memory_gb: null}       # per cell, runner-side (not part of the spec)
profiles:                           # `--profile NAME` variants, e.g. the tiny CPU twin of an accuracy grid
  tiny:
    hardware: {gpu: cpu}
    override: {model: tiny, lr: 3.0e-3}            # over every cell
    patches:                                       # over the cells they match (each must match one)
      - {match: {strategy: full}, set: {lr: 3.0e-4}, reason: ...}
```

String values may use `${VAR}` or `${VAR:-default}` (environment). Each cell becomes a `RunSpec`; the built-in
validity rules (flash attention needs bf16; V100 has neither bf16 nor flash attention; QLoRA needs a Turing or
newer GPU) mark cells invalid with their reason. Nothing is dropped silently: `plan` lists every cell.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from training_core.spec import RunSpec

from ..paths import MATRICES
from ..readers import load_yaml, schema_problems
from .cells import BATCH_PER_GPU, LIMIT_KEYS, Cell, expand
from .hardware import AUTO, Machine
from .limits import MAX_CELLS
from .schema import GridError, GridFile, Patch, resolve_hardware


@dataclass
class Grid:
    path: Path
    file: GridFile
    profile: str | None = None
    cells: list[Cell] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)  # the chosen profile's, for `plan` to show
    auto_hardware: bool = False  # the grid's hardware was `auto` (resolved from the machine that loaded it)

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.runnable]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value, where: str):
    """${VAR} and ${VAR:-default} in every string (the grid's size and depth were bounded when it was read:
    readers.load_yaml; aliases become copies here)."""
    if isinstance(value, str):
        def sub(match):
            name, default = match.group(1), match.group(2)
            if default is not None and "${" in default:
                raise GridError(f"{where}: a ${{...}} inside a default ({match.group(0)}...) is not supported; write "
                                "the default out, e.g. ${DATA:-synthetic}")
            if os.environ.get(name):  # as the shell: an empty variable counts as unset
                return os.environ[name]
            if default is not None:
                return default
            raise GridError(f"{where}: ${{{name}}} is not set; export {name}=... or write ${{{name}:-default}}")
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_grid(path: str | Path, profile: str | None = None, repeats: int = 1, machine: Machine | None = None,
              max_cells: int = MAX_CELLS) -> Grid:
    """A validated, expanded grid; `machine` (default: detected when the grid asks for `auto` hardware) resolves
    `gpu: auto` / `gpus_per_node: auto`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        candidates = sorted(p.stem for p in MATRICES.glob("*.yaml")) if MATRICES.is_dir() else []
        hint = f" (shipped grids: {', '.join(candidates)})" if candidates else ""
        raise GridError(f"{path}: no such grid file{hint}")
    raw = load_yaml(path.resolve() if path.is_symlink() else path, "grid", GridError)
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid must be a YAML mapping with at least 'name'")
    try:
        grid_file = GridFile.model_validate(_expand_env(raw, path.name))
    except ValidationError as exc:
        raise GridError(_grid_error(path, exc)) from None
    _check_spec_keys(path, grid_file)
    chosen = grid_file.profiles.get(profile) if profile is not None else None
    grid_file = grid_file.with_profile(profile, path)
    auto = AUTO in (grid_file.hardware.gpu, grid_file.hardware.gpus_per_node)
    grid_file = grid_file.model_copy(update={"hardware": resolve_hardware(grid_file.hardware, machine)})
    grid = Grid(path, grid_file, profile=profile, patches=list(chosen.patches) if chosen else [], auto_hardware=auto)
    grid.cells = expand(grid_file, path, chosen, repeats, where=f"profiles.{profile}", max_cells=max_cells)
    return grid


def _grid_error(path: Path, exc: ValidationError) -> str:
    return "\n".join(f"{path}: {problem}" for problem in schema_problems(exc, GridFile, "a grid"))


def _check_spec_keys(path: Path, grid: GridFile) -> None:
    valid = set(RunSpec.model_fields) | set(LIMIT_KEYS) | {BATCH_PER_GPU}
    places = [("defaults", grid.defaults), ("axes", grid.axes)]
    places += [(f"include[{i}]", c) for i, c in enumerate(grid.include)]
    places += [(f"exclude[{i}].match", r.match) for i, r in enumerate(grid.exclude)]
    places += [(f"references[{i}].match", r.match) for i, r in enumerate(grid.references)]
    for name, profile in grid.profiles.items():
        places += [(f"profiles.{name}.defaults", profile.defaults), (f"profiles.{name}.override", profile.override)]
        for i, patch in enumerate(profile.patches):
            places += [(f"profiles.{name}.patches[{i}].match", patch.match),
                       (f"profiles.{name}.patches[{i}].set", patch.set)]
    for where, mapping in places:
        for key in mapping:
            if key not in valid:
                close = [v for v in sorted(valid) if v.startswith(key[:3])]
                fix = f"did you mean {' or '.join(close)}?" if close else f"valid keys: {', '.join(sorted(valid))}"
                raise GridError(f"{path}: {where}.{key}: not a cell setting; {fix}")
    for key, values in grid.axes.items():
        if not values:
            raise GridError(f"{path}: axes.{key}: an axis needs at least one value")
