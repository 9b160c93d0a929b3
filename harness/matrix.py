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

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training_core.spec import RunSpec, SpecError

from .hardware import AUTO, Machine, detect
from .limits import MAX_CELLS

# GPU generations by the grid's `gpu` name: (compute capability, has bf16, has flash attention)
GPU_GENERATIONS: dict[str, tuple[tuple[int, int], bool, bool]] = {
    "V100": ((7, 0), False, False),
    "T4": ((7, 5), False, False),
    "RTX8000": ((7, 5), False, False),
    "A10G": ((8, 6), True, True),
    "A100": ((8, 0), True, True),
    "L40S": ((8, 9), True, True),
    "H100": ((9, 0), True, True),
    "H200": ((9, 0), True, True),
}


class GridError(ValueError):
    """A grid problem, naming the file, the key and the fix."""


class Hardware(BaseModel):
    """`gpu: auto` and `gpus_per_node: auto`: the GPUs of the machine the grid runs on (1 to 8 of them), resolved
    when the grid is loaded (see `resolve_hardware`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: str = "cpu"
    gpus_per_node: int | Literal["auto"] = 1
    nodes: int = Field(default=1, ge=1)

    @field_validator("gpus_per_node")
    @classmethod
    def _count(cls, value):
        if value != AUTO and value < 1:
            raise ValueError("Input should be greater than or equal to 1 (or 'auto': the GPUs of this machine)")
        return value

    @property
    def label(self) -> str:
        """The results group of a grid run for this hardware elsewhere (SLURM): '8xA100', 'cpu'."""
        return "cpu" if self.gpu == "cpu" else f"{self.gpus_per_node}x{self.gpu}"


MAX_AUTO_GPUS = 8


def resolve_hardware(hardware: Hardware, machine: Machine | None = None) -> Hardware:
    """`auto` values from this machine's GPUs (NVML); without GPUs `gpu: auto` stays (its cells then end
    `unsupported` or are refused by the runner's hardware check) and `gpus_per_node: auto` is 1."""
    if hardware.gpu != AUTO and hardware.gpus_per_node != AUTO:
        return hardware
    machine = machine if machine is not None else detect()
    gpu = machine.gpu if hardware.gpu == AUTO and machine.gpu_count else hardware.gpu
    count = hardware.gpus_per_node if hardware.gpus_per_node != AUTO else max(1, min(machine.gpu_count,
                                                                                     MAX_AUTO_GPUS))
    return Hardware(gpu=gpu, gpus_per_node=count, nodes=hardware.nodes)


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float = Field(default=3600, gt=0)
    memory_gb: float | None = Field(default=None, gt=0)


class ExcludeRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any]
    reason: str


class ReferenceRule(BaseModel):
    """Cells matching every key (and without their own `reference`) point at documented row `key`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any]
    key: str


class Patch(BaseModel):
    """In a profile: cells matching every key of `match` (after the profile's override) get `set` on top of it,
    e.g. a lower learning rate for the strategy that needs one. Each patch must match at least one cell."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any]
    set: dict[str, Any]
    reason: str = ""


class Profile(BaseModel):
    """A named variant of a grid (`--profile NAME`): other hardware, defaults under the cells, overrides over them,
    patches over those for the cells they match."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    hardware: Hardware | None = None
    defaults: dict[str, Any] = {}
    override: dict[str, Any] = {}
    patches: list[Patch] = []
    limits: Limits | None = None


class GridFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a folder name: not '.', '..' or hidden
    description: str = ""
    hardware: Hardware = Hardware()
    defaults: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[ExcludeRule] = []
    references: list[ReferenceRule] = []
    limits: Limits = Limits()
    profiles: dict[str, Profile] = {}

    def with_profile(self, name: str | None, path: Path) -> GridFile:
        if name is None:
            return self
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise GridError(f"{path}: profiles.{name}: no such profile (this grid has: {known})")
        profile = self.profiles[name]
        return self.model_copy(update={
            "hardware": profile.hardware or self.hardware,
            "defaults": {**self.defaults, **profile.defaults},
            "axes": {k: v for k, v in self.axes.items() if k not in profile.override},
            "include": [{**cell, **profile.override} for cell in self.include],
            "limits": profile.limits or self.limits,
            "profiles": {},
        })


@dataclass(frozen=True)
class Cell:
    index: int
    spec: RunSpec | None  # None when the cell's fields do not make a valid spec
    fields: dict[str, Any]
    limits: Limits
    status: str = "planned"  # planned | excluded | invalid
    reason: str | None = None

    @property
    def runnable(self) -> bool:
        return self.status == "planned"


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


MAX_VALUES = 100_000  # values in a grid after expansion (the shipped ones hold a few hundred)
MAX_DEPTH = 32  # nesting of mappings and lists


def _expand_env(value, where: str, budget: list[int] | None = None, depth: int = 0):
    """${VAR} and ${VAR:-default} in every string. YAML aliases become copies here, so the expanded size is bounded
    (a "billion laughs" grid is an error, not minutes of work), as is the nesting."""
    budget = budget if budget is not None else [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise GridError(f"{where}: the grid expands to more than {MAX_VALUES} values (YAML aliases repeat what they "
                        "point at); a grid holds a few hundred")
    if depth > MAX_DEPTH:
        raise GridError(f"{where}: nested more than {MAX_DEPTH} levels deep; a grid is a few levels deep")
    if isinstance(value, str):
        def sub(match):
            name, default = match.group(1), match.group(2)
            if os.environ.get(name):  # as the shell: an empty variable counts as unset
                return os.environ[name]
            if default is not None:
                return default
            raise GridError(f"{where}: ${{{name}}} is not set; export {name}=... or write ${{{name}:-default}}")
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}", budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", budget, depth + 1) for i, v in enumerate(value)]
    return value


def _grid_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise GridError(f"{path}: is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise GridError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def load_grid(path: str | Path, profile: str | None = None, repeats: int = 1, machine: Machine | None = None,
              max_cells: int = MAX_CELLS) -> Grid:
    """A validated, expanded grid; `machine` (default: detected when the grid asks for `auto` hardware) resolves
    `gpu: auto` / `gpus_per_node: auto`."""
    path = Path(path)
    if not path.is_file():
        candidates = sorted(p.stem for p in Path("matrices").glob("*.yaml")) if Path("matrices").is_dir() else []
        hint = f" (shipped grids: {', '.join(candidates)})" if candidates else ""
        raise GridError(f"{path}: no such grid file{hint}")
    try:
        raw = yaml.load(_grid_text(path), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise GridError(f"{path}: nested too deeply to read; a grid is a few levels deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise GridError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
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
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown key; a grid has {', '.join(GridFile.model_fields)}"
        lines.append(f"{path}: {key}: {message}")
    return "\n".join(lines)


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


def count_cells(grid: GridFile, repeats: int = 1) -> int:
    """How many cells a grid expands to, without expanding it."""
    crossed = math.prod(len(v) for v in grid.axes.values()) if grid.axes else 0
    return max(crossed + len(grid.include), 1) * repeats


def expand(grid: GridFile, path: Path, profile: Profile | None = None, repeats: int = 1,
           where: str = "profile", max_cells: int = MAX_CELLS) -> list[Cell]:
    """Every cell; with `repeats` > 1 each cell N times with seeds seed, seed+1, ... (mean and spread in reports).
    `grid` has the profile's include overrides applied already (`with_profile`); its override reaches the axes
    cells here, and its patches every matching cell."""
    override = profile.override if profile else {}
    if repeats < 1:
        raise GridError(f"{path}: --repeats must be at least 1, got {repeats}")
    if (count := count_cells(grid, repeats)) > max_cells:
        raise GridError(f"{path}: the grid expands to {count:,} cells, more than --max-cells {max_cells:,}; cut its "
                        "axes (or raise --max-cells if that many cells are meant)")
    base = {"gpu": grid.hardware.gpu, "gpus_per_node": grid.hardware.gpus_per_node, "nodes": grid.hardware.nodes,
            **grid.defaults}
    combos = [dict(zip(grid.axes, values, strict=True)) for values in itertools.product(*grid.axes.values())]
    fields_list = [{**base, **combo, **override} for combo in combos] if grid.axes else []
    fields_list += [{**base, **extra} for extra in grid.include]
    if not fields_list:
        fields_list = [{**base, **override}]
    _apply_patches(fields_list, profile.patches if profile else [], path, where)
    for i, rule in enumerate(grid.exclude):  # a rule that matches nothing is a typo or a stale rule: say so
        if not any(_matches(fields, rule.match) for fields in fields_list):
            raise GridError(f"{path}: exclude[{i}].match: {rule.match} matches no cell; check the keys and values "
                            "against `harness plan` or remove the rule")
    if repeats > 1:
        fields_list = [{**f, "seed": int(f.get("seed", 0)) + k} for f in fields_list for k in range(repeats)]
    cells, seen = [], {}
    for index, fields in enumerate(fields_list):
        cell = _make_cell(index, fields, grid, path)
        if cell.spec is not None and cell.runnable:
            if cell.spec.run_id in seen:
                cell = Cell(index, cell.spec, fields, grid.limits, "excluded",
                            f"duplicate of cell {seen[cell.spec.run_id]} (same spec)")
            else:
                seen[cell.spec.run_id] = index
        cells.append(cell)
    return cells


def _matches(fields: dict, match: dict) -> bool:
    """A rule's `match` (exclude, references, profile patches): every key has the value, as the cell writes it."""
    return all(fields.get(k) == v for k, v in match.items())


def _apply_patches(fields_list: list[dict], patches: list[Patch], path: Path, where: str) -> None:
    """Set each patch's values, in order, on the cells it matches (in place); a patch matching none is an error."""
    for i, patch in enumerate(patches):
        hits = [f for f in fields_list if _matches(f, patch.match)]
        if not hits:
            raise GridError(f"{path}: {where}.patches[{i}].match: {patch.match} matches no cell; "
                            "check the keys and values against `harness plan` or remove the patch")
        for fields in hits:
            fields.update(patch.set)


LIMIT_KEYS = ("timeout_s", "memory_gb")
BATCH_PER_GPU = "batch_per_gpu"  # global_batch = batch_per_gpu x nodes x gpus_per_node (for `auto` GPU counts)


def _make_cell(index: int, fields: dict, grid: GridFile, path: Path) -> Cell:
    """A cell's fields are RunSpec fields plus, optionally, its own runner limits (timeout_s, memory_gb) and
    `batch_per_gpu` (the global batch per GPU, for grids whose GPU count is `auto`)."""
    own = {k: fields[k] for k in LIMIT_KEYS if k in fields}
    limits = grid.limits.model_copy(update=own) if own else grid.limits
    fields = {k: v for k, v in fields.items() if k not in LIMIT_KEYS}
    if BATCH_PER_GPU in fields:
        if "global_batch" in fields:
            raise GridError(f"{path}: cell {index}: both global_batch and {BATCH_PER_GPU} are set; keep one")
        per_gpu = fields.pop(BATCH_PER_GPU)
        fields["global_batch"] = per_gpu * int(fields.get("nodes", 1)) * int(fields.get("gpus_per_node", 1)) \
            if isinstance(per_gpu, int) else per_gpu  # not a whole number: RunSpec names the bad value
    if "reference" not in fields:
        for rule in grid.references:
            if _matches(fields, rule.match):
                fields = {**fields, "reference": rule.key}
                break
    cell = _plain_cell(index, fields, grid, path)
    return Cell(cell.index, cell.spec, cell.fields, limits, cell.status, cell.reason)


def _plain_cell(index: int, fields: dict, grid: GridFile, path: Path) -> Cell:
    for rule in grid.exclude:
        if _matches(fields, rule.match):
            return Cell(index, None, fields, grid.limits, "excluded", rule.reason)
    try:
        spec = RunSpec.parse(fields, where=f"{path.name} cell {index}")
    except SpecError as exc:
        return Cell(index, None, fields, grid.limits, "invalid", str(exc))
    reason = validity_reason(spec)
    return Cell(index, spec, fields, grid.limits, "invalid" if reason else "planned", reason)


def validity_reason(spec: RunSpec) -> str | None:
    """The built-in rules, each with its reason."""
    if spec.attention == "flash_attention_2" and spec.precision != "bf16":
        return "flash attention needs bf16 (the guide's known issue: flash attention cannot be used with fp16)"
    generation = GPU_GENERATIONS.get(spec.gpu.upper())
    if generation is not None:
        capability, has_bf16, has_flash = generation
        if spec.precision == "bf16" and not has_bf16:
            return f"{spec.gpu} has no bf16 (needs Ampere or newer)"
        if spec.attention == "flash_attention_2" and not has_flash:
            return f"{spec.gpu} cannot run flash attention (needs Ampere or newer)"
        if spec.strategy == "qlora" and capability < (7, 5):
            return f"QLoRA's bitsandbytes 4-bit kernels need Turing or newer; {spec.gpu} is sm_{capability[0]}{capability[1]}"
    elif spec.gpu != "cpu":
        return None
    if spec.gpu == "cpu" and spec.precision == "fp16":
        return "fp16 mixed precision needs a CUDA GPU"
    if spec.gpu == "cpu" and spec.attention == "flash_attention_2":
        return "flash attention needs a CUDA GPU"
    return None
