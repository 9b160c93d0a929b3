"""Reading the files people and earlier runs leave (grids, gate rules, documented tables, rows, results, records) as
strictly as the harness writes its own: only a regular file is read (never through a symbolic link, never a named
pipe, device or directory, which would hang or mislead), with a size bound, as UTF-8; and where a problem is in a YAML
file: a syntax error as `file:line:column`, a schema error as dotted keys (`rows.0.images_per_s`)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from training_core import files
from training_core.errors import UserError
from training_core.files import MIB, kind_of  # noqa: F401 - kind_of is read from here by the harness

TEXT_LIMIT = 16 * MIB  # a grid, a rules file, a documented table, a result.json, env.json: kilobytes in practice


class UnreadableError(UserError):
    """A file the harness will not read (a link, a pipe, a directory, too large, not UTF-8), named with the fix."""


def open_regular(path: Path, what: str = "file"):
    """A binary handle on `path`, which must be a regular file reached without following a link in its last part.
    Opened without blocking (a named pipe is refused, never waited on); UnreadableError otherwise."""
    return files.open_regular(path, what, error=UnreadableError)


def read_bytes(path: Path, what: str = "file", limit: int = TEXT_LIMIT) -> bytes:
    """A regular file's bytes, at most `limit` of them (a larger file is refused, not read)."""
    return files.read_bytes(path, what, limit, error=UnreadableError)


def decode(data: bytes, path: Path, what: str = "file") -> str:
    """UTF-8 text (a BOM is dropped); UTF-16 and invalid bytes are refused naming the line."""
    return files.decode(data, path, what, UnreadableError)


def read_text(path: Path, what: str = "file", limit: int = TEXT_LIMIT) -> str:
    """A regular file's UTF-8 text, bounded (see read_bytes and decode)."""
    return files.read_text(path, what, limit, follow_links=False, error=UnreadableError)


MAX_VALUES = 100_000  # values in a YAML file after its aliases are expanded (the shipped grids hold a few hundred)
MAX_DEPTH = 32  # nesting of mappings and lists


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


def load_yaml(path: Path, what: str, error: type[UserError] = UnreadableError, limit: int = 4 * MIB):
    """A YAML file people write (a grid, a rules file, a documented table): a regular UTF-8 file of at most `limit`
    bytes, every key once, at most MAX_VALUES values once its aliases are expanded (a "billion laughs" file is an
    error in milliseconds) and MAX_DEPTH levels deep. Problems are `error`s naming the file and line."""
    try:
        text = read_text(path, what, limit)
    except UnreadableError as exc:
        raise error(str(exc)) from None
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise error(f"{path}: nested too deeply to read; a {what} is a few levels deep") from None
    except yaml.YAMLError as exc:
        raise error(yaml_problem(path, exc)) from None
    budget = [MAX_VALUES]

    def walk(node, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise error(f"{path}: the {what} expands to more than {MAX_VALUES} values (YAML aliases repeat what they "
                        "point at); it holds a few hundred")
        if depth > MAX_DEPTH:
            raise error(f"{path}: nested more than {MAX_DEPTH} levels deep; a {what} is a few levels deep")
        for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()):
            walk(child, depth + 1)

    walk(value, 0)
    return value


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
