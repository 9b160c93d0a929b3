"""Results as data: the store's rows as one pandas DataFrame (`load_rows`), flat columns with units in their names,
and its export as CSV, Parquet or JSON lines (`export`). Import pandas only through here: the rest of `harness`
stays importable without it.

    from harness.results import load_rows
    df = load_rows("results/runs/cpu_smoke")          # one row per cell: the newest, by the store's one rule
    df.plot.scatter("peak_memory_gib", "images_per_s")
"""

from ..table import rows_frame
from .frame import COLUMNS_DOC, load_rows

__all__ = ["COLUMNS_DOC", "load_rows", "rows_frame"]
