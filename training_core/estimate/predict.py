"""The one entry point of a memory prediction: a cell's traced peak and its fit on the GPUs asked for, in the one
shape every caller records (the runner's rows through `python -m training_core.estimate`, `harness estimate`,
`harness plan --estimate`).

The shape: the trace's numbers (`peak_bytes`, `phase`, `breakdown`, `tokens`, `examples`, `method`, `notes`,
`seconds`), `fits` (GPU -> verdict: gpu, fits, needed_bytes, total_bytes, reason, rule) and `fit` (the verdict on the
cell's own GPU, or the first asked: what a row keeps and the runner acts on); or `{"error": "..."}` when the cell
could not be traced (said in the row, never a crash of the caller)."""

from __future__ import annotations

from pathlib import Path

from training_core.spec import RunSpec

from .fit import MARGIN_RULE, fits_for


def predict(spec: RunSpec, data_root: Path | None = None, cell_dir: Path | None = None, gpus=()) -> dict:
    """Trace the cell (its twin under `cell_dir`, else under `data_root`) and judge it on `gpus` (default: the
    cell's own GPU; none for a CPU cell)."""
    from .trace import estimate_cell  # torch: only when a prediction is made

    try:
        predicted = estimate_cell(spec, data_root, cell_dir=cell_dir)
    except Exception as exc:  # one cell's failure is said where the prediction would be
        return {"error": f"{type(exc).__name__}: {exc}"}
    predicted["fits"] = {gpu: {"gpu": gpu, "fits": v.fits, "needed_bytes": v.needed, "total_bytes": v.total,
                               "reason": v.reason, "rule": MARGIN_RULE}
                         for gpu, v in fits_for(predicted["peak_bytes"], spec.world_size, spec.gpu, gpus).items()}
    if predicted["fits"]:
        predicted["fit"] = next(iter(predicted["fits"].values()))
    return predicted
