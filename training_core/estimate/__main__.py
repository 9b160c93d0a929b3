"""`python -m training_core.estimate --spec S --data-root R [--gpu NAME]`: one cell's prediction as JSON on stdout
(the runner asks this way, in a process of its own, so the runner itself never imports torch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_core.estimate", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-root", type=Path, help="where the cells' twins are written (shared by key)")
    where.add_argument("--cell-dir", type=Path, help="the cell's own directory (its twin is then the cell's)")
    parser.add_argument("--gpu", help="judge the fit on this GPU (default: the cell's own; none for CPU cells)")
    args = parser.parse_args(argv)
    from training_core.spec import RunSpec

    from .fit import MARGIN_RULE, fits_for
    from .trace import estimate_cell

    spec = RunSpec.load(args.spec)
    try:
        predicted = estimate_cell(spec, args.data_root, cell_dir=args.cell_dir)
    except Exception as exc:  # said in the row, never a crash of the runner
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 0
    for gpu, verdict in fits_for(predicted["peak_bytes"], spec.world_size, spec.gpu,
                                 [args.gpu] if args.gpu else []).items():
        predicted["fit"] = {"gpu": gpu, "fits": verdict.fits, "needed_bytes": verdict.needed,
                            "total_bytes": verdict.total, "reason": verdict.reason, "rule": MARGIN_RULE}
    print(json.dumps(predicted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
