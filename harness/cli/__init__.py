"""`python -m harness ...` (also the `phi3v-bench` console script).

doctor         what this machine can run (GPUs, bf16, flash-attn, SDPA, bitsandbytes, DeepSpeed, NCCL, NVML, which
               cells of the shipped grids run here) and what to install
compare B C    regression gate: C against baseline B (exit 1 on a regression); several C: interleaved passes
export CELL    write a cell's kept model (official layout) or adapter (peft layout; --merge: folded into the base)
baseline DIR   store a clean run as a baseline
report DIR     markdown reports of stored rows beside the guide's documented numbers
results DIR    the rows as one table (pandas): CSV, Parquet or JSON lines
track DIR      send stored rows to MLflow or TensorBoard (each row once)
cost           what the guide's documented configurations cost at sourced GPU-hour prices
plan MATRIX    the expanded cells of a grid (a table, or --json) and their launch commands; runs nothing
run MATRIX     run a grid's cells (one torchrun process group each), rows to results/runs/<matrix>/<group>/
data synth     write a synthetic twin of a task (deterministic by seed)
data convert   convert UCF-101 videos or a Hugging Face layout to the conversation-format jsonl
data validate  check every record of a dataset (file and line for each problem) and print its shape
"""

from __future__ import annotations

import argparse
import errno
import sys

# Nothing heavy at module level: each command imports what it needs when it runs, so `--help` and the light commands
# never load torch or transformers (tests/test_cli_imports.py holds this).
from training_core.errors import UserError

from . import data, grids, machine, results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (grids, machine, results, data):
        commands.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a mistake in what the user gave (any UserError) is `error: ...` and exit 2, anything else a
    bug with its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        from harness.outputs import plain  # text from files and flags: no control characters reach the terminal

        print(f"error: {plain(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        from harness.outputs import plain

        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {plain(where)}{exc.strerror}: the disk is full; what was recorded before stays (a row cut "
              "short is set aside on the next run): free space and rerun", file=sys.stderr)
        return 2


# a write the machine refused for want of space: the user's to fix, not a bug of the harness
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


if __name__ == "__main__":
    raise SystemExit(main())
