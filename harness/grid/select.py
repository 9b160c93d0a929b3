"""Which cells of a grid a command takes: `--filter KEY=VALUE` (repeatable), and the check that a selection runs
something (an unknown key, a value no cell has, or a grid whose every cell is excluded is an error that says why,
never a silent success)."""

from __future__ import annotations

from training_core.spec import RunSpec

from .cells import Cell
from .file import Grid
from .schema import GridError


def parse_filters(items: list[str]) -> dict[str, str]:
    """`["strategy=lora", "precision=bf16"]` -> {"strategy": "lora", "precision": "bf16"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GridError(f"--filter {item!r}: expected KEY=VALUE, e.g. --filter strategy=lora")
        out[key] = value
    return out


def matches(cell: Cell, filters: dict[str, str]) -> bool:
    return all(str(cell.fields.get(k, getattr(cell.spec, k, None))) == v for k, v in filters.items())


def selected(grid: Grid, filters: dict[str, str]) -> list[Cell]:
    """The runnable cells the filters select."""
    return [c for c in grid.runnable if matches(c, filters)]


def check_selection(grid: Grid, filters: dict[str, str], to_run: bool = True) -> None:
    """A grid with no runnable cell (`to_run`: `plan` still lists such a grid with every reason), or filters that
    name an unknown key or match no runnable cell, run nothing: an error that says why, never a silent success."""
    valid = set(RunSpec.model_fields)
    for key, value in filters.items():
        if key not in valid:
            raise GridError(f"--filter {key}={value}: {key!r} is not a cell setting; valid keys: "
                            f"{', '.join(sorted(valid))}")
    runnable = grid.runnable
    if not runnable and to_run:
        reasons = sorted({f"{c.status}: {c.reason}" for c in grid.cells})
        raise GridError(f"{grid.path}: none of the grid's {len(grid.cells)} cell(s) can run ("
                        + "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "") + ")")
    if filters and runnable and not any(matches(c, filters) for c in runnable):
        seen = {k: sorted({str(getattr(c.spec, k)) for c in runnable}) for k in filters}
        raise GridError(f"{grid.path}: --filter {' '.join(f'{k}={v}' for k, v in filters.items())} matches none of "
                        f"the {len(runnable)} runnable cell(s); the grid has "
                        + "; ".join(f"{k}: {', '.join(v)}" for k, v in seen.items()))
