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
from .rows import newest

ROWS = "rows.jsonl"
ENV = "env.json"


class StoreError(UserError):
    pass


COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


def check_component(value: str, what: str) -> str:
    """`value` names one folder under the results root: letters, digits and _ . + - only, not starting with a dot
    (so not '.', '..', a hidden name, a path or an absolute path)."""
    if not isinstance(value, str) or not COMPONENT.match(value):
        raise StoreError(f"{what} {value!r}: not a folder name (use letters, digits and _ . + -, not starting with "
                         "'.'; no '/')")
    return value


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"PID {info['pid']} on {info['host']} since {since}: {info['command']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


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
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise StoreError(f"{self.path}: not a file; move it aside (the store is re-created from "
                             "cells/*/result.json on the next run)")
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):  # the file must end with a newline; anything after the last is torn
                    print(f"warning: {self.path}: ignoring a torn last line ({len(line)} bytes) from an "
                          "interrupted write", file=sys.stderr)
                    return
                if not line.strip():
                    continue
                yield self._row(line, number)

    def _row(self, line: bytes, number: int) -> dict:
        try:
            row = json.loads(line)
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

    def latest(self) -> tuple[list[dict], list[str]]:
        """The newest row of each cell (`rows.newest`: the one rule report, compare, baseline and the end-of-run
        console use), and the run_ids that have more than one final row."""
        latest, duplicated = newest(self.iter_rows())
        return list(latest.values()), duplicated

    def final_rows(self) -> dict[str, dict]:
        """The newest final row per run_id: the cells a run skips as done."""
        latest, _ = newest(self.iter_rows(), final_only=True)
        return {key[0]: row for key, row in latest.items()}

    # ---------------------------------------------------------------- writing
    def repair(self) -> None:
        """Move a torn last line aside so that the next append starts on a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            aside = self.path.with_name(f"{ROWS}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
            aside.write_bytes(data[cut:])
            with self.path.open("r+b") as handle:
                handle.truncate(cut)
            print(f"warning: {self.path}: a torn last line was moved to {aside.name}", file=sys.stderr)

    def append(self, row: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.repair()
        line = dumps(row) + "\n"  # strict JSON: a non-finite number is written as null
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def links(self) -> list[Path]:
        """Symbolic links anywhere in the group (the group folder itself included): a group holds only its own
        files, so a link (cells/<id> to another folder, log.txt to a user's file) would make a run write or delete
        through it."""
        found = [self.directory] if self.directory.is_symlink() else []
        if self.directory.is_dir() and not found:
            for root, folders, files in os.walk(self.directory, followlinks=False):
                found += [Path(root) / name for name in [*folders, *files] if (Path(root) / name).is_symlink()]
        return sorted(found)

    def check_no_links(self) -> None:
        """No symbolic links anywhere in the group, and its own files (rows.jsonl, env.json) are files: checked
        before anything is run or written."""
        found = self.links()
        if found:
            shown = ", ".join(str(p) for p in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise StoreError(f"{self.directory}: holds symbolic links ({shown}); a results group holds only its own "
                             "files: remove the links (or copy the files in) and run again")
        for name in (ROWS, ENV):
            path = self.directory / name
            if path.exists() and not path.is_file():
                raise StoreError(f"{path}: not a file; move it aside (rows.jsonl is re-created from "
                                 "cells/*/result.json and env.json on the next run)")

    @contextlib.contextmanager
    def lock(self, wait: bool = False, poll_s: float = 1.0):
        """Hold the group's lock while the block runs; held elsewhere: StoreError naming the holder, or (wait)
        block until it is free. A group holding links is refused first (nothing is written through one)."""
        self.check_no_links()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".lock"
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
