"""Reading a small file the user handed over (a model's config.json, a preprocessor config) without trusting it: a
regular file only (a named pipe would block the read forever, a directory or device is named as such), read to a size
bound, as UTF-8. Links are followed here, unlike the harness's own records (harness/readers.py): a Hugging Face cache
snapshot is a folder of links into its blob store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from training_core.errors import UserError


class FileReadError(UserError):
    """A file that is not read, and why, naming it."""


def read_text(path: Path, what: str, limit: int) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileReadError(f"{path}: the {what} cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileReadError(f"{path}: the {what} is not a regular file (a named pipe, device or directory)")
        os.set_blocking(fd, True)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileReadError(f"{path}: the {what} is over {limit // 2**20} MiB; it is kilobytes in a real checkpoint")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileReadError(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None
