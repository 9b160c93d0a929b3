"""A grid's cells: the expansion of axes, includes and profiles into cells, and each cell's validity (the GPU
catalogue's rules, training_core/gpus.py). Nothing is dropped silently: an excluded or invalid cell stays listed
with its reason."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_core.gpus import grid_reason
from training_core.spec import RunSpec, SpecError

from .limits import MAX_CELLS
from .schema import GridError, GridFile, Limits, Patch, Profile


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
    """The GPU catalogue's rules (training_core/gpus.py) for the cell's GPU, each with its reason; the cell's device
    is checked by the same rules when it starts (training_core/capabilities.py)."""
    return grid_reason(spec.gpu, spec.precision, spec.attention, spec.strategy)
