"""The results store: `results/runs/<matrix>/<group>/` with `rows.jsonl` (append-only, one complete JSON line per
cell, flushed and fsynced), `env.json` and `cells/<run_id>/` (spec, result, log).

A torn last line (a crash in the middle of a write) is detected, moved aside to `rows.jsonl.torn-<time>` with a
warning, and never merged; nothing that was recorded is lost.

One runner at a time per group: `RowStore.lock()` takes an exclusive `flock` on `<group>/.lock` and writes the
holder (PID, host, start time, command) into it. The kernel releases the lock when the holder exits or dies, so a
lock left by a killed runner is taken over without any guess about liveness; a second runner is refused with the
holder's name, or waits (`--wait`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from training_core.errors import UserError
from training_core.result import dumps, row_problem

from . import outputs
from .readers import UnreadableError, kind_of, open_regular
from .rows import newest

ROWS = "rows.jsonl"
ENV = "env.json"
LOCK = ".lock"
# predictions made after the run (`harness estimate --rows GROUP`, e.g. on a CPU after a short GPU lease), one JSON line
# per run_id: {"run_id": ..., "predicted": {...}}; `latest` joins them to rows that have no prediction of their own
PREDICTIONS = "predicted.jsonl"
PREDICTION_LINE_LIMIT = 2**20
ROW_LINE_LIMIT = 256 * 2**20  # a row the harness writes is kilobytes; a hand-made 50 MB reason is still read (and clipped)
# A cell's own files (cells/<run_id>/...): a directory, pipe or link under one of these names is refused.
CELL_FILE = re.compile(r"^(result|spec|predicted|procs(\.node\d+)?)\.json$|^log(\.node\d+)?\.txt$|^slurm_job_id$"
                       r"|^job\.sbatch$|^slurm-\d+\.log$")


def _own_file(folder: Path, name: str, group: Path) -> bool:
    """Whether `folder/name` is where the store keeps a file of its own."""
    if folder == group:
        return name in (ROWS, ENV, LOCK, PREDICTIONS)
    return folder.parent == group / "cells" and bool(CELL_FILE.match(name))


class StoreError(UserError):
    pass


def prediction_problem(entry) -> str | None:
    """What is wrong with one line of PREDICTIONS, or None."""
    if not isinstance(entry, dict) or set(entry) != {"run_id", "predicted"}:
        return "expected an object with run_id and predicted"
    if not isinstance(entry["run_id"], str) or not COMPONENT.match(entry["run_id"]):
        return f"run_id {str(entry['run_id'])[:80]!r} is not a run id"
    peak = entry["predicted"].get("peak_bytes") if isinstance(entry["predicted"], dict) else None
    if type(peak) not in (int, float) or not 0 < peak < 2**60:
        return "predicted.peak_bytes is not a positive number of bytes"
    return None


COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


def check_component(value: str, what: str) -> str:
    """`value` names one folder under the results root: letters, digits and _ . + - only, not starting with a dot
    (so not '.', '..', a hidden name, a path or an absolute path)."""
    if not isinstance(value, str) or not COMPONENT.match(value):
        raise StoreError(f"{what} {value!r}: not a folder name (use letters, digits and _ . + -, not starting with "
                         "'.'; no '/')")
    return value


def group_dirs(path: Path) -> list[Path]:
    """A group directory itself, every group of a grid's directory, or every group under a results root."""
    path = Path(path)
    if (path / ROWS).exists():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{ROWS}")) or sorted(p.parent for p in path.glob(f"*/*/{ROWS}"))
    if not found:
        raise StoreError(f"{path}: no {ROWS} below it (expected results/runs/<matrix>/<group>/{ROWS})")
    return found


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"PID {info['pid']} on {info['host']} since {since}: {info['command']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def _shared(pairs: list[tuple]) -> dict:
    """A row's object with its keys and short text values shared with every other row's (sys.intern): 10^5 rows
    repeat the same ~80 keys and a few dozen values (task, strategy, GPU names); one copy of each instead of one per
    row took `compare` of 10^5 cells from 3.6 GB to 1.8 GB and `report` from 1.8 GB to 0.85 GB."""
    return {sys.intern(k): sys.intern(v) if type(v) is str and len(v) <= 64 else v for k, v in pairs}


def _lines(path: Path, what: str, limit: int, not_ours: str):
    """(number, line) of each complete, non-blank line of the append-only file `path`, read one at a time from a
    regular file only; a line longer than `limit` bytes is refused ("no <not_ours>"); a torn last line (an
    interrupted write: no newline) is left out with a warning."""
    try:
        handle = open_regular(path, what)
    except UnreadableError as exc:
        raise StoreError(str(exc)) from None
    with handle:
        for number, line in enumerate(iter(lambda: handle.readline(limit + 1), b""), start=1):
            if len(line) > limit:
                raise StoreError(f"{path}:{number}: a line of more than {limit // 2**20} MiB is no {not_ours}")
            if not line.endswith(b"\n"):  # the file must end with a newline; anything after the last is torn
                print(f"warning: {path}: ignoring a torn last line ({len(line)} bytes) from an interrupted write",
                      file=sys.stderr)
                return
            if line.strip():
                yield number, line


def _repair(path: Path) -> None:
    """Move a torn last line of `path` aside (to <name>.torn-<time>) so that the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        aside.write_bytes(data[cut:])
        with path.open("r+b") as handle:
            handle.truncate(cut)
        print(f"warning: {path}: a torn last line was moved to {aside.name}", file=sys.stderr)


def _append_line(path: Path, line: str) -> None:
    """One complete line appended to `path` (a torn last line moved aside first), flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


class RowStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / ROWS

    def cell_dir(self, run_id: str) -> Path:
        return self.directory / "cells" / run_id

    # ---------------------------------------------------------------- reading
    def rows(self) -> list[dict]:
        return list(self.iter_rows())

    def iter_rows(self):
        """The rows one at a time, read line by line (a store of 200k rows is never held as text and rows at once:
        `latest` keeps only each cell's newest)."""
        if self.directory.is_symlink():
            raise StoreError(f"{self.directory}: the results group is a symbolic link; give the group itself")
        if not self.path.exists() and not self.path.is_symlink():
            return
        if self.path.is_dir():
            raise StoreError(f"{self.path}: not a file; move it aside (the store is re-created from "
                             "cells/*/result.json on the next run)")
        for number, line in _lines(self.path, "rows file", ROW_LINE_LIMIT,
                                   "row the harness wrote; remove it or move the file aside"):
            yield self._row(line, number)

    def _row(self, line: bytes, number: int) -> dict:
        try:
            row = json.loads(line, object_pairs_hook=_shared)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise StoreError(
                f"{self.path}:{number}: not a JSON row ({why}); the store was edited by hand or the disk is "
                f"damaged: move the file aside and re-run to re-create rows from cells/*/result.json"
            ) from None
        except RecursionError:
            raise StoreError(f"{self.path}:{number}: nested too deeply to be a row") from None
        problem = row_problem(row)
        if problem is not None:
            raise StoreError(f"{self.path}:{number}: not a row ({problem}); remove or fix that line (the "
                             "store is re-created from cells/*/result.json when it is moved aside)")
        return row

    def latest(self, drop: tuple[str, ...] = ()) -> tuple[list[dict], list[str]]:
        """The newest row of each cell (`rows.newest`: the one rule report, compare, baseline and the end-of-run
        console use), without the keys in `drop`, and the run_ids that have more than one final row."""
        latest, duplicated = newest(self.iter_rows(), drop=drop)
        later = self.predictions() if "predicted" not in drop else {}
        return [row if "predicted" in row or row.get("run_id") not in later else {**row, "predicted": later[row["run_id"]]}
                for row in latest.values()], duplicated

    def predictions(self) -> dict[str, dict]:
        """The predictions made after the run (PREDICTIONS), the newest per run_id; {} when there are none."""
        path = self.directory / PREDICTIONS
        if not path.exists() and not path.is_symlink():
            return {}
        found = {}
        for number, line in _lines(path, "predictions file", PREDICTION_LINE_LIMIT,
                                   "prediction the harness wrote; remove it, or the file (`harness estimate --rows` "
                                   "makes it again)"):
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                entry = None
            problem = prediction_problem(entry)
            if problem:
                raise StoreError(f"{path}:{number}: not a prediction ({problem}); remove that line, or the file "
                                 "(`harness estimate --rows` makes it again)")
            found[entry["run_id"]] = entry["predicted"]
        return found

    def add_prediction(self, run_id: str, predicted: dict) -> None:
        """Append one prediction made after the run (as rows are: a torn last line moved aside first, fsynced)."""
        _append_line(self.directory / PREDICTIONS, dumps({"run_id": run_id, "predicted": predicted}) + "\n")

    def final_rows(self) -> dict[str, dict]:
        """The newest final row per run_id: the cells a run skips as done."""
        latest, _ = newest(self.iter_rows(), final_only=True)
        return {key[0]: row for key, row in latest.items()}

    # ---------------------------------------------------------------- writing
    def repair(self) -> None:
        """Move a torn last line aside so that the next append starts on a fresh line."""
        _repair(self.path)

    def append(self, row: dict) -> None:
        _append_line(self.path, dumps(row) + "\n")  # strict JSON: a non-finite number is written as null

    def strangers(self) -> list[tuple[Path, str]]:
        """What a group must not hold, with what it is: a symbolic link anywhere (the group folder itself included:
        a run would write or delete through it, a read would read another file), a named pipe, socket or device
        anywhere (a read of it hangs), and a directory where the harness keeps a file of its own (rows.jsonl,
        env.json, .lock; a cell's result.json, spec.json, log, process record, job id)."""
        if self.directory.is_symlink():
            return [(self.directory, "a symbolic link")]
        found = []
        if self.directory.is_dir():
            for root, folders, files in os.walk(self.directory, followlinks=False):
                here = Path(root)
                for name in [*folders, *files]:
                    kind = kind_of(here / name)
                    if kind is None or (kind == "a directory" and not _own_file(here, name, self.directory)):
                        continue
                    found.append((here / name, kind))
        return sorted(found)

    def check_no_links(self) -> None:
        """Nothing strange in the group (`strangers`): checked before anything is run, written or read."""
        found = self.strangers()
        own = [(p, k) for p, k in found if k == "a directory" and p.parent == self.directory]
        if own:  # the store's own files, as the message has always said
            raise StoreError(f"{own[0][0]}: not a file; move it aside (rows.jsonl is re-created from "
                             "cells/*/result.json and env.json on the next run)")
        if found:
            shown = ", ".join(f"{p} ({k})" for p, k in found[:5]) + (f" and {len(found) - 5} more"
                                                                      if len(found) > 5 else "")
            links = " symbolic links" if all(k == "a symbolic link" for _, k in found) else " what it should not"
            raise StoreError(f"{self.directory}: holds{links}: {shown}; a results group holds only its own "
                             "regular files: remove them (or copy the files in) and run again")

    def held_by(self) -> str | None:
        """Who holds the group's lock now (a run in progress), or None. Asked without creating or changing anything."""
        path = self.directory / LOCK
        if kind_of(path) is not None or not path.exists():
            return None
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(path)
        return None

    @contextlib.contextmanager
    def lock(self, wait: bool = False, poll_s: float = 1.0):
        """Hold the group's lock while the block runs; held elsewhere: StoreError naming the holder, or (wait)
        block until it is free. A group holding links is refused first (nothing is written through one)."""
        self.check_no_links()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK
        handle = path.open("a+")
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        raise StoreError(f"{self.directory} is in use by another runner ({_holder(path)}); wait "
                                         "for it to finish, or pass --wait to start when it has") from None
                    time.sleep(poll_s)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                     "command": " ".join(sys.argv)}) + "\n")
            handle.flush()
            yield
        finally:
            handle.close()  # releases the lock

    def write_env(self, env: dict) -> None:
        """`env.json`, whole or not at all (outputs.write: a temporary file renamed over it, never through a link)."""
        try:
            outputs.write(self.directory / ENV, json.dumps(env, indent=2, sort_keys=True) + "\n")
        except outputs.OutputError as exc:
            raise StoreError(str(exc)) from None
