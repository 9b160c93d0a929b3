"""The guide's documented numbers as validated data (`results/reference/*.yaml`).

Each file is one table of the guide: its source, the model it was measured on (Phi-3-vision or Phi-3.5-vision, as
the guide notes), the recipe revision that measured it, the task, hardware and shared settings, and rows with a `key` (cells point at it with
`reference:`), their own settings and values. A value is a number or `{value, approx}` ("~42" in the guide)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from training_core.errors import UserError

from .. import paths
from ..readers import load_yaml, schema_problems

VALUE_UNITS = {
    "images_per_s": "images/s",
    "speedup": "x (vs the table's first row)",
    "peak_memory_gb": "GB",
    "anls": "ANLS x 100",
    "accuracy": "accuracy %",
}


class DocumentedError(UserError):
    """A malformed table of documented numbers (results/reference/*.yaml), naming the file and the key."""
    pass


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float
    approx: bool = False


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    settings: dict[str, Any] = {}
    images_per_s: float | _Value | None = None
    speedup: float | _Value | None = None
    peak_memory_gb: float | _Value | None = None
    anls: float | _Value | None = None
    accuracy: float | _Value | None = None


class _Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu: str | None
    gpus_per_node: int


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    source: str
    recipe_revision: Literal["current", "2024-06"]  # the recipe revision that measured it (recipe_revisions.py)
    model: str
    task: str
    metric: str | None = None
    hardware: _Hardware
    settings: dict[str, Any] = {}
    rows: list[_Row]


@dataclass(frozen=True)
class RefValue:
    value: float
    unit: str
    approx: bool

    def text(self, digits: int | None = None) -> str:
        number = f"{self.value:g}" if digits is None else f"{self.value:.{digits}f}"
        return ("~" if self.approx else "") + number


@dataclass(frozen=True)
class RefRow:
    key: str
    table: str
    source: str
    model: str
    task: str
    gpu: str | None
    gpus_per_node: int
    settings: dict[str, Any]
    values: dict[str, RefValue]
    recipe_revision: str = "current"

    @property
    def gpus(self) -> int:
        return int(self.settings.get("gpus", self.gpus_per_node))


def load_references(directory: Path | None = None) -> dict[str, RefRow]:
    """Every documented row by key, from `directory` (default: the repository's results/reference)."""
    directory = directory if directory is not None else paths.REFERENCE
    rows: dict[str, RefRow] = {}
    files = sorted(Path(directory).glob("*.yaml"))
    if not files:
        raise DocumentedError(f"{directory}: no reference tables (*.yaml)")
    for path in files:
        table = _read_table(path)
        for row in table.rows:
            if row.key in rows:
                raise DocumentedError(f"{path}: key {row.key!r} is also in table {rows[row.key].table}")
            values = {}
            for name, unit in VALUE_UNITS.items():
                raw = getattr(row, name)
                if raw is not None:
                    value = raw if isinstance(raw, _Value) else _Value(value=raw)
                    values[name] = RefValue(value.value, unit, value.approx)
            if not values:
                raise DocumentedError(f"{path}: row {row.key!r} has no values")
            rows[row.key] = RefRow(row.key, table.table, table.source, table.model, table.task, table.hardware.gpu,
                                   table.hardware.gpus_per_node, {**table.settings, **row.settings}, values,
                                   table.recipe_revision)
    return rows


def _read_table(path: Path) -> _Table:
    """One table, or DocumentedError naming the file, the line (YAML) or the key (schema) and what is wrong."""
    raw = load_yaml(path, "reference table", DocumentedError, limit=2**20)
    if not isinstance(raw, dict):
        raise DocumentedError(f"{path}: a reference table is a YAML mapping with {', '.join(_Table.model_fields)}")
    try:
        return _Table.model_validate(raw)
    except ValidationError as exc:
        problems = schema_problems(exc, _Table, "a reference table")
        raise DocumentedError(f"{path}: invalid reference table: " + "; ".join(problems)) from None
