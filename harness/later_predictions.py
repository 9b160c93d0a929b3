"""Predictions made after a run, joined to its rows by run_id: `harness estimate --rows GROUP`.

A short GPU lease is best spent measuring; a prediction costs 20-40 s of CPU per cell of the full preset, and needs no
GPU. So a GPU run can go with `--no-estimate`, and any CPU predicts its rows afterwards: each row's own spec (checked to
give the row's run_id) is traced as `harness estimate` traces a grid's cells, and the prediction is appended to the
group's `predicted.jsonl` (harness/store.py, PREDICTIONS). Report, compare and baseline read rows through
`RowStore.latest`, which joins a later prediction to a row that has none of its own; the prediction says it was made
afterwards (`made`), where and when."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from training_core.spec import RunSpec

from .store import RowStore, StoreError

# rows worth a prediction: those whose peak was measured or ran out of memory (the estimator's check is against them)
PREDICTED_STATUSES = ("ok", "oom")


def rows_to_predict(store: RowStore, force: bool = False) -> tuple[list[dict], list[str]]:
    """The newest rows that ran (PREDICTED_STATUSES) without a prediction (any, with `force`), and what was left out
    and why."""
    rows, _ = store.latest(drop=("series", "log"))
    todo, left, seen = [], [], set()
    for row in rows:
        if row["run_id"] in seen:  # repeats and passes of one cell share its spec: one prediction serves them all
            continue
        if row["status"] not in PREDICTED_STATUSES:
            left.append(f"{row['run_id']}: status {row['status']}")
        elif row.get("predicted") and "error" not in row["predicted"] and not force:
            left.append(f"{row['run_id']}: has a prediction")
        else:
            todo.append(row)
            seen.add(row["run_id"])
    return todo, left


def predict_rows(group: Path, data_root: Path, force: bool = False, progress=None) -> tuple[list[dict], list[str]]:
    """Predict the rows of `group` that have no prediction and record each in PREDICTIONS as it is made (a run cut
    short keeps what it made). Returns one entry per row (run_id, cell, predicted or error) and what was left out."""
    from training_core.estimate.predict import predict

    store = RowStore(group)
    if not store.path.is_file():
        raise StoreError(f"{group}: no rows.jsonl; give a results group (results/runs/<grid>/<group>)")
    store.check_no_links()
    todo, left = rows_to_predict(store, force)
    out = []
    with store.lock():
        for row in todo:
            entry = {"run_id": row["run_id"], "cell": row.get("cell")}
            try:
                spec = RunSpec.model_validate(row["spec"])
            except ValueError as exc:
                entry["error"] = f"its spec is not one this version reads: {str(exc).splitlines()[0]}"
            else:
                if spec.run_id != row["run_id"]:
                    entry["error"] = (f"its spec gives run_id {spec.run_id}, not the row's: the row was written by "
                                      "another version of the harness, whose cell this version cannot trace")
            if "error" not in entry:
                predicted = predict(spec, data_root)
                if "error" in predicted:
                    entry["error"] = predicted["error"]
                else:
                    predicted["made"] = {"when": "after the run", "host": socket.gethostname(),
                                         "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                    store.add_prediction(row["run_id"], predicted)
                    entry["predicted"] = predicted
            out.append(entry)
            if progress is not None:
                progress(entry)
    return out, left
