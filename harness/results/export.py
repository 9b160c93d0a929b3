"""`harness results DIR --format csv|parquet|jsonl [--out FILE]`: the results DataFrame as a file (or CSV / JSON
lines on stdout). Parquet goes through pyarrow: without it, a clear error naming what to install. A file is written
whole or not at all (harness/outputs.py write), never through a link, never over a results store's own
files, and replaces an existing file only when asked (`--replace`)."""

from __future__ import annotations

import io
from pathlib import Path

from training_core.errors import UserError

FORMATS = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}
STORE_FILES = ("rows.jsonl", "env.json", "predicted.jsonl", "result.json", "spec.json")


class ExportError(UserError):
    pass


def check_target(out: Path, fmt: str, replace: bool) -> Path:
    """Refuse, before anything is read, an export target that would harm: a link, a directory, a store's own file, a
    name that does not end as its format does, an existing file without --replace."""
    if out.is_symlink():
        raise ExportError(f"--out {out}: is a symbolic link; give the file itself (nothing is written through a link)")
    if out.is_dir():
        raise ExportError(f"--out {out}: is a directory; give a file name ending in {FORMATS[fmt]}")
    if out.name in STORE_FILES:
        raise ExportError(f"--out {out}: is the name of a results store's own file; choose another name")
    if out.suffix != FORMATS[fmt]:
        raise ExportError(f"--out {out}: a {fmt} export ends in {FORMATS[fmt]} (or give --format to match the name)")
    if out.exists() and not replace:
        raise ExportError(f"--out {out}: exists; add --replace to write over it, or choose another name")
    return out


def to_bytes(frame, fmt: str) -> bytes:
    """The DataFrame in `fmt`: CSV (header, no index), Parquet (pyarrow), JSON lines (one object per row, nulls
    kept)."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    if fmt == "jsonl":
        return frame.to_json(orient="records", lines=True, double_precision=15).encode()
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError("--format parquet needs pyarrow, which is not installed: pip install pyarrow (or "
                              "pip install -e '.[track]', which brings it)") from None
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, engine="pyarrow")
        return buffer.getvalue()
    raise ExportError(f"--format {fmt}: give one of {', '.join(FORMATS)}")
