"""The repository's fixed places: its root, the shipped grids, the documented numbers, the reports."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: cells run with it first on PYTHONPATH
MATRICES = ROOT / "matrices"  # the shipped grids (`harness run NAME`)
REFERENCE = ROOT / "results" / "reference"  # the guide's documented numbers as data
REPORTS = ROOT / "reports"  # generated reports (and their index)
TEMPLATES = REPORTS / "templates"  # the reports' jinja2 templates
ESTIMATE_DATA = ROOT / "build" / "estimate"  # synthetic twins the estimator writes (never the current directory)


def grid_path(name: str) -> Path:
    """A grid file as given (`path/to/grid.yaml`, or any existing path), else a shipped grid's NAME."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return MATRICES / f"{name}.yaml"
