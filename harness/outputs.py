"""Files the harness writes for people (reports, the reports' index, comparisons, estimates): checked before
anything is computed, written whole or not at all, and never over a file the harness did not write.

- An output is a markdown file (`.md`): a results store's own files (rows.jsonl, env.json, ...) can never be named.
- It is not a directory and not a symbolic link (a dangling one included): nothing is written through a link.
- An existing file is replaced only if the harness wrote it: a report has its `.meta.json` beside it, the others
  start with `MARK`. A user's own `index.md` or notes are left alone, with an error that says so.
- Writing goes to a temporary file in the same folder, then is renamed over the target; the reports' index is
  written under a lock, so concurrent `report` runs into one folder neither fail nor interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path

from training_core.errors import UserError

MARK = "<!-- written by python -m harness; regenerated on every run: edits are lost -->"


class OutputError(UserError):
    pass


# Characters that act on a terminal or reorder text instead of showing: C0/C1 controls (escape sequences clear the
# screen or set the window title), NUL, and the bidirectional overrides (U+202E turns text around).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plain(text) -> str:
    """User text as it can be shown on a terminal or in a report: every control or reordering character written out
    as its escape (`\\x1b`, `\\u202e`); line breaks and tabs kept."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def table_cell(text) -> str:
    """Text for a markdown table cell: no column breaks, no HTML, one line, no control characters."""
    return plain(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def ours(path: Path, sidecar: Path | None = None) -> bool:
    """Whether the existing file at `path` was written by the harness."""
    if sidecar is not None and sidecar.is_file():
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as text:
            return text.readline().rstrip("\n") == MARK
    except OSError:
        return False


def check(path: Path, what: str = "--out", sidecar: Path | None = None) -> Path:
    """Refuse, before any work, an output that is not a markdown file name, is a directory or a link, or would
    replace a file the harness did not write."""
    if path.is_symlink():
        raise OutputError(f"{what} {path}: is a symbolic link; give the file itself (nothing is written through a "
                          "link)")
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a directory; give a file name ending in .md")
    if path.suffix != ".md":
        raise OutputError(f"{what} {path}: give a markdown file name ending in .md")
    if path.exists() and not (path.is_file() and ours(path, sidecar)):
        raise OutputError(f"{what} {path}: exists and was not written by the harness; choose another name or move "
                          "it away")
    existing = next(parent for parent in path.parents if parent.exists())  # "/" at the latest
    if not existing.is_dir():
        raise OutputError(f"{what} {path}: {existing} is not a directory")
    try:  # tried, not asked: root passes os.access on read-only mounts and on /proc, where nothing can be created
        handle, probe = tempfile.mkstemp(prefix=".harness-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {existing} ({exc.strerror or exc}); choose a folder you "
                          "can write to") from None
    return path


def write(path: Path, text: str | bytes, marked: bool = False) -> Path:
    """`text` (or bytes: an export) into `path` whole or not at all (`marked`: with MARK as its first line); on any
    error (a full disk) the temporary file goes too, so nothing 0-byte or half-written is left beside `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text if isinstance(text, bytes) else ((MARK + "\n" if marked else "") + text).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)
        with open(temporary, "xb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive lock on `folder` (its `.lock` file) while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".harness-output.lock"
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):  # a pipe would block the open, a link redirect it
        raise OutputError(f"{lock}: is not the lock file the harness keeps there; remove it")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
