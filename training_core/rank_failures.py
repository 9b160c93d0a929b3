"""Which rank failed first, when a multi-rank cell fails (issue 32, item 5).

A rank that raises writes `failure.rank<N>.json` (its status, reason and the time it failed) and exits at once,
without `destroy_process_group()`: that call waited on the peers, which sat in a collective for the failed rank
(30-60 minutes under NCCL's timeout), while an exit makes torchrun stop the others within seconds. Its peers then fail
with a symptom ("Connection closed by peer", a collective timeout): the cause is the record written first, and
that is what the cell's row says, naming the rank. When rank 0 never wrote the cell's result (torchrun stopped it in a
collective), the launcher builds the row from these records. No torch here: the harness reads them too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .result import write_json_atomic

PATTERN = "failure.rank*.json"


def path_of(out: Path, rank: int) -> Path:
    return out / f"failure.rank{rank}.json"


def record(out: Path, rank: int, status: str, reason: str | None, at: float | None = None) -> None:
    write_json_atomic(path_of(out, rank), {"rank": rank, "status": status, "reason": reason or "",
                                           "at": time.time() if at is None else at})


def clear(out: Path, rank: int) -> None:
    path_of(out, rank).unlink(missing_ok=True)


def first_cause(out: Path, since: float = 0.0) -> dict | None:
    """The earliest failure record written at or after `since` (an older one is an earlier run's), or None."""
    found = []
    for path in sorted(out.glob(PATTERN)):
        try:
            entry = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 1_000_000 else None
        except (OSError, ValueError):
            continue
        if (isinstance(entry, dict) and isinstance(entry.get("rank"), int) and isinstance(entry.get("status"), str)
                and isinstance(entry.get("reason"), str) and isinstance(entry.get("at"), (int, float))
                and entry["at"] >= since):
            found.append(entry)
    return min(found, key=lambda e: (e["at"], e["rank"])) if found else None


def described(entry: dict) -> str:
    return f"rank {entry['rank']} failed first: {entry['reason']}"
