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

    from .predict import predict

    predicted = predict(RunSpec.load(args.spec), args.data_root, cell_dir=args.cell_dir,
                        gpus=[args.gpu] if args.gpu else [])
    print(json.dumps(predicted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
