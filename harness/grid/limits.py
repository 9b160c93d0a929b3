"""Limits checked before a grid is expanded, in a module of their own so the CLI's `--help` states them without
importing the grid machinery (pydantic, YAML, the spec)."""

MAX_CELLS = 10_000  # a grid that expands to more is refused before it is expanded (--max-cells raises it)
