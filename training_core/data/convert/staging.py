"""Where a converter writes before anything is in place: a hidden folder under --out, moved into place by the
converter when every split converted, and removed on every error, Ctrl-C, SIGTERM and SIGHUP. A failed conversion
(a bad record, a full disk, a signal) so leaves nothing that looks converted and nothing that refuses the rerun."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..records import DataError


class Stopped(BaseException):
    """SIGTERM or SIGHUP during a conversion: unwinds like Ctrl-C so that the staging folder is removed."""


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: signals stay as they were
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def staging(out_dir: Path, name: str) -> Iterator[Path]:
    """A fresh folder `.<name>-partial-*` under `out_dir`; errors while writing become a DataError naming --out."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=out_dir))
    except OSError as exc:
        raise DataError([f"--out {out_dir}: cannot write there ({exc.strerror})"]) from None
    try:
        with signals_unwind():
            yield folder
    except Stopped as exc:  # exit as a signalled command does, after `finally` removed the folder
        raise SystemExit(f"error: stopped by {exc}; nothing of the conversion was kept in {out_dir}") from None
    except OSError as exc:
        raise DataError([f"--out {out_dir}: could not write the conversion ({exc.strerror or exc}); nothing was "
                         "kept: free space and rerun"]) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def move_into_place(converted: Path, out_dir: Path, files: list[str], image_dirs: list[str]) -> None:
    """The converted files and image folders from the staging folder to --out (an earlier conversion's image
    folders of the same names removed first: --overwrite)."""
    for rel in image_dirs:
        shutil.rmtree(out_dir / rel, ignore_errors=True)
        if (converted / rel).is_dir():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(converted / rel, out_dir / rel)
    for rel in files:
        os.rename(converted / rel, out_dir / rel)
