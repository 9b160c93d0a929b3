"""The store's rows as one pandas DataFrame.

One row per cell by the store's one rule (`RowStore.latest`: the newest row of each run_id, predictions made later
joined), or every stored row with `all_runs=True` (the history: reruns, interrupted attempts). Columns, flat, units
in their names:

- who: `matrix`, `group`, `cell`, `run_id`, `status`, `reason`, `profile`, `pass`, `started_at`, `finished_at`,
  `wall_s`;
- `spec.<key>`: the cell's settings (training_core/spec.py), `env.<key>`: versions, host, GPUs (nested objects as
  dotted keys, lists as JSON text);
- the row's metrics under their own names (`images_per_s`, `tokens_per_s`, `mfu`, `peak_mem_allocated_bytes`, ...);
  `unmeasured.<metric>`: why a metric could not be measured;
- derived: `gpus` (nodes x GPUs per node), `peak_memory_gib` and `peak_memory_kind` (the report's one peak rule,
  harness/rows.py), `input_bound`, `predicted.peak_gib`, `predicted.fits`, `tracking.<tracker>.<field>`;
- documented, where the cell names a reference row of the guide: `documented.key`, `documented.images_per_s`,
  `documented.peak_memory_gb` (the guide's GB), `documented.anls`, `documented.accuracy`, `documented.speedup`;
- cost (harness/prices.py), where the GPU has a sourced price: `usd_per_gpu_hour`, `usd_per_1k_images`,
  `finetune_hours` and `finetune_usd` (the task's fine-tune at the measured images/s), `price.machine`,
  `price.source`.
"""

from __future__ import annotations

from pathlib import Path

from .. import prices as cost
from ..report.documented import load_references
from ..rows import UNREAD
from ..store import RowStore, group_dirs
from ..table import flat_row, rows_frame

COLUMNS_DOC = __doc__


def load_rows(path: str | Path, all_runs: bool = False, prices: str | Path | None = None,
              references: str | Path | None = None, with_cost: bool = True):
    """The rows under `path` (a results group, a grid's folder or a results root) as a pandas DataFrame, one row per
    cell (or every stored row with `all_runs`), sorted by grid, group and cell. `prices`: a prices file (default
    results/prices.yaml); `with_cost=False` leaves the cost columns out."""
    refs = load_references(Path(references) if references else None)
    table = cost.load_prices(Path(prices) if prices else None) if with_cost else None
    records = []
    for group_dir in group_dirs(Path(path)):
        store = RowStore(group_dir)
        if all_runs:
            rows = [{k: v for k, v in r.items() if k not in UNREAD} for r in store.iter_rows()]
        else:
            rows = store.latest(drop=UNREAD)[0]
        records += [flat_row(row, group_dir.name, refs, table) for row in rows]
    frame = rows_frame(records)
    if not frame.empty:
        keys = [k for k in ("matrix", "group", "cell", "finished_at") if k in frame.columns]
        frame = frame.sort_values(keys, kind="stable", na_position="last").reset_index(drop=True)
    return frame
