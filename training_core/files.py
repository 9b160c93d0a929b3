"""Reading a small file without trusting it, for the training core and the harness alike: a regular file only (a named
pipe would block the read forever, a directory or device is named as such), read to a size bound, as UTF-8.

Files the user hands the training core (a model's config.json, a preprocessor config, a checkpoint's JSON) are read
through links (`follow_links=True`, its default): a Hugging Face cache snapshot is a folder of links into its blob
store. The harness's own records and the grids people write are read without following a link in the last part
(harness/readers.py), each side raising its own error class."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from training_core.errors import UserError

MIB = 2**20


class FileReadError(UserError):
    """A file that is not read, and why, naming it."""


def kind_of(path: Path) -> str | None:
    """What a path is when it is not a regular file: 'a symbolic link', 'a directory', 'a named pipe (FIFO)', ...;
    None for a regular file or a path that does not exist."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return _kind(mode)


def _kind(mode: int) -> str | None:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: Path, what: str = "file", *, follow_links: bool = False,
                 error: type[UserError] = FileReadError):
    """A binary handle on `path`, which must be a regular file (reached without following a link in its last part
    unless `follow_links`). Opened without blocking (a named pipe is refused, never waited on); `error` otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise error(f"{path}: the {what} is a symbolic link; the harness reads only the file itself "
                        "(copy it in place of the link)") from None
        raise error(f"{path}: the {what} cannot be read ({exc.strerror or exc})") from None
    kind = _kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise error(f"{path}: the {what} is {kind}, not a regular file; move it aside")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, what: str, limit: int, *, follow_links: bool = False,
               error: type[UserError] = FileReadError) -> bytes:
    """A regular file's bytes, at most `limit` of them (a larger file is refused, not read)."""
    with open_regular(path, what, follow_links=follow_links, error=error) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: the {what} is larger than {limit / MIB:g} MiB; a {what} is far smaller "
                    "(is it the right file?)")
    return data


def decode(data: bytes, path: Path, what: str = "file", error: type[UserError] = FileReadError) -> str:
    """UTF-8 text (a BOM is dropped); UTF-16 and invalid bytes are refused naming the line."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{path}: is UTF-16 text; save the {what} as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8") from None


def read_text(path: Path, what: str, limit: int, *, follow_links: bool = True,
              error: type[UserError] = FileReadError) -> str:
    """A regular file's UTF-8 text, bounded (see read_bytes and decode)."""
    return decode(read_bytes(path, what, limit, follow_links=follow_links, error=error), path, what, error)
