"""Baselines: what makes runs comparable (grid, model, GPU type and count: the baseline key), finding the stored
baseline of a run, reading one or more results groups as passes, and storing a clean run as a baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training_core.gpus import short_name
from training_core.result import dumps

from .. import outputs
from ..readers import UnreadableError, read_text
from ..store import RowStore, StoreError, check_component
from .rules import CompareError


def baseline_key(rows: list[dict]) -> str:
    """What makes runs comparable: grid, model, GPU type and count ('a100_speed/phi-3.5-vision-A100x8'). The GPU
    is named by the catalogue's short name, as results groups name it (8xA100)."""
    row = rows[0]
    env, spec = row.get("env") or {}, row["spec"]
    gpus = env.get("gpus") or []
    gpu = short_name(gpus[0]["name"]) if gpus else "cpu"
    model = Path(spec.get("model", "")).name
    return f"{row.get('matrix') or 'adhoc'}/{model}-{gpu}x{env.get('world_size', 1)}"


def find_baseline(root: Path, current_rows: list[dict]) -> Path:
    if (root / "rows.jsonl").exists():
        return root
    key = baseline_key(current_rows)
    candidate = root / key
    if not (candidate / "rows.jsonl").exists():
        known = sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/rows.jsonl"))
        raise CompareError(
            f"no baseline for {key} under {root} (have: {', '.join(known) or 'none'}); the comparison is not "
            f"possible: record one with `make regress-baseline` on a comparable machine"
        )
    return candidate


def load_passes(paths: list[Path], drop: tuple[str, ...] = ()) -> list[dict]:
    """The rows of one or more results groups, each group one pass (`pass` 1, 2, ...): the same cells run again,
    interleaved (every cell once per pass). Rows that carry a pass already (a stored baseline) keep it. `drop`: keys
    not kept (the comparison reads neither series nor log tails; a stored baseline keeps them)."""
    if len(paths) == 1:
        return load_rows(paths[0], drop)
    rows = []
    for number, path in enumerate(paths, start=1):
        rows += [{**row, "pass": number} for row in load_rows(path, drop)]
    return rows


def load_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    path = Path(path)
    directory = path.parent if path.name == "rows.jsonl" else path
    rows, duplicated = RowStore(directory).latest(drop=drop)
    if not rows:
        raise CompareError(f"{path}: no rows (expected a results group with rows.jsonl)")
    if duplicated:
        print(f"warning: {directory / 'rows.jsonl'}: {len(duplicated)} cell(s) have more than one final row "
              f"({', '.join(duplicated[:5])}{' ...' if len(duplicated) > 5 else ''}); the newest of each is used, "
              "as the report does (repeats are cells of their own: --repeats)", file=sys.stderr)
    return rows


def hardware_of(rows: list[dict]) -> str:
    """The key's hardware part (model-GPUxcount): what two runs must share to be compared."""
    return baseline_key(rows).split("/", 1)[1]


def store_baseline(groups: list[Path], root: Path, replace: bool = False) -> tuple[str, Path, int]:
    """Store a clean run (one group per pass) as the baseline of its grid, model and hardware under `root`: every
    row must be ok and of one key; an existing baseline is replaced only with `replace`. Written whole, never
    through a link. Returns (key, folder, rows)."""
    named = ", ".join(map(str, groups))
    for group in groups:
        holder = RowStore(group).held_by()
        if holder is not None:
            raise CompareError(f"{group}: a run is still writing this group ({holder}); store the baseline once it "
                               "has finished")
    rows = load_passes(groups)
    env = _env_text(groups[0])
    bad = [r["run_id"] for r in rows if r["status"] != "ok"]
    if bad:
        raise CompareError(f"{named}: cells {bad} did not finish ok; a baseline must be a clean run")
    keys = {baseline_key([row]) for row in rows}
    if len(keys) > 1:
        raise CompareError(f"{named}: the groups are runs of different grids, models or hardware "
                           f"({', '.join(sorted(keys))}); store one baseline at a time")
    key = baseline_key(rows)
    for part in key.split("/", 1):  # the grid's name, then model-GPUxN: one folder each, inside root
        try:
            check_component(part, "the baseline's folder")
        except StoreError as exc:
            raise CompareError(f"{groups[0]}: {exc} (from the rows' matrix, model and GPUs)") from None
    if root.exists() and not root.is_dir():
        raise CompareError(f"--root {root}: not a directory")
    target = root / key
    if (target / "rows.jsonl").exists() and not replace:
        raise CompareError(f"{target}: a baseline is already stored for {key}; pass --replace to replace it "
                           "(compare the new run against it first: harness compare)")
    # env.json first, rows.jsonl (what makes a baseline stored) last: a write that fails (a full disk) leaves no
    # rows.jsonl without its env.json, and nothing that refuses the retry
    if env is not None:
        outputs.write(target / "env.json", env)
    else:
        (target / "env.json").unlink(missing_ok=True)  # a replaced baseline's env.json is not this run's
    outputs.write(target / "rows.jsonl", "".join(dumps(row) + "\n" for row in rows))
    return key, target, len(rows)


def _env_text(group: Path) -> str | None:
    """The group's env.json as text, checked before anything is stored (a regular file, never a link, UTF-8 JSON
    of an object); None when the group has none."""
    path = group / "env.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        text = read_text(path, "environment file", limit=2**20)
        if not isinstance(json.loads(text), dict):
            raise ValueError("not a JSON object")
    except (UnreadableError, ValueError, RecursionError) as exc:
        raise CompareError(f"{path}: not the environment a run records ({exc}); move it aside, or rerun the "
                           "group") from None
    return text
