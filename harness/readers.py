"""Where a problem is in a YAML file people write (grids, gate rules, the guide's documented tables): a YAML syntax
error as `file:line:column`, a schema error as dotted keys (`rows.0.images_per_s`), each with what is wrong."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


def yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """`file:line:column: invalid YAML (what)` for a syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})"


def schema_problems(exc: ValidationError, model: type[BaseModel], what: str) -> list[str]:
    """`key.path: message` per error; an unknown key names the keys `what` (a grid, a rules file) has."""
    out = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown key; {what} has {', '.join(model.model_fields)}"
        out.append(f"{key}: {message}")
    return out
