"""Everything checked before a run starts, in one call: a refusal (a sentence that says what to fix) or nothing.
Nothing is written before these pass, so a refused run leaves no results folder behind."""

from __future__ import annotations

import os
from pathlib import Path

from training_core.errors import UserError

from ..grid import hardware
from ..grid.file import Grid
from ..grid.preflight import missing_inputs
from ..grid.select import check_selection, selected
from ..store import check_component
from . import launchers
from .options import RunOptions


def prepare(grid: Grid, options: RunOptions, machine: hardware.Machine) -> str | None:
    """Why this run cannot start, or None: the launcher refuses the options, the selection runs nothing, this machine
    is not the grid's hardware, an input is missing, the node flags do not make a run, the results root is not
    writable."""
    try:
        return _refusal(grid, options, machine)
    except UserError as exc:
        return str(exc)


def _refusal(grid: Grid, options: RunOptions, machine: hardware.Machine) -> str | None:
    if options.group is not None:
        check_component(options.group, "--group")
    launcher = launchers.get(options.launcher)
    refused = launcher.refuse(grid, options)
    if refused:
        return refused
    check_selection(grid, options.filters)
    hw = grid.file.hardware
    problem = hardware.mismatch(machine, hw.gpu, hw.gpus_per_node) if launcher.hardware_here else None
    if problem and options.check_hardware:
        return (f"{grid.path}: {problem}; pass --allow-hardware-mismatch to run anyway (rows record the hardware "
                "actually used)")
    problems = missing_inputs(selected(grid, options.filters)) if launcher.inputs_here and not options.dry_run else []
    if problems:
        return "the grid's inputs are not here:\n" + "\n".join(f"  - {p}" for p in problems)
    nodes = options.nodes
    if nodes.node_rank >= nodes.nnodes:
        return f"--node-rank {nodes.node_rank} with --nnodes {nodes.nnodes}: a node's rank is 0 .. {nodes.nnodes - 1}"
    if nodes.nnodes > 1 and not nodes.master_addr:
        return "--nnodes > 1 needs --master-addr (the first node's address)"
    return None if options.dry_run else _unwritable(options.results)  # last: tried by writing


def _unwritable(directory: Path) -> str | None:
    """Why a results directory cannot be written (tried, not asked), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"--results {directory}: cannot write there ({exc.strerror or exc}); choose a writable directory"
    return None
