"""`harness plan | estimate | run`: the commands that take a grid. Each parses, calls the library (harness.plan,
harness.run), prints, and chooses the exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.grid.limits import MAX_CELLS
from harness.paths import ESTIMATE_DATA

from .args import nonempty, positive, ranged


def add(sub) -> None:
    plan = sub.add_parser("plan", help="expand a grid and print its cells and launch commands")
    plan.add_argument("matrix", help="a grid file (matrices/NAME.yaml) or a shipped grid's NAME")
    plan.add_argument("--json", action="store_true", help="print the runnable cells as a JSON list of RunSpecs")
    plan.add_argument("--profile", help="a profile of the grid (e.g. tiny)")
    plan.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    plan.add_argument("--repeats", type=int, default=1, help="each cell N times with consecutive seeds")
    plan.add_argument("--max-cells", type=positive(int), default=MAX_CELLS,
                      help=f"refuse a grid that expands to more cells (default {MAX_CELLS:,})")
    plan.add_argument("--estimate", action="store_true",
                      help="add each cell's predicted peak memory and its fit on the cell's GPU (loads torch; "
                           "`harness estimate` gives the breakdown)")
    plan.set_defaults(func=cmd_plan)

    estimate = sub.add_parser("estimate", help="predict each cell's peak GPU memory per rank and whether it fits "
                                               "(one optimizer step traced with fake tensors; no GPU needed)")
    estimate.add_argument("matrix", nargs="?", help="a grid file or a shipped grid's NAME")
    estimate.add_argument("--rows", type=Path, metavar="GROUP",
                          help="instead of a grid: predict the rows of a results group that ran without a prediction "
                               "(e.g. `run --no-estimate` on a short GPU lease), joined to them by run_id in "
                               "GROUP/predicted.jsonl; report and compare read them from there")
    estimate.add_argument("--force", action="store_true", help="with --rows: predict rows that have a prediction too")
    estimate.add_argument("--profile", help="a profile of the grid")
    estimate.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    estimate.add_argument("--gpu", action="append", default=[], metavar="NAME", type=nonempty,
                          help="judge the fit on this GPU (repeatable; default: the cell's own GPU), e.g. A100, "
                               "H100, V100")
    estimate.add_argument("--json", action="store_true", help="the predictions as JSON")
    estimate.add_argument("--data-root", type=Path, default=ESTIMATE_DATA,
                          help="where the cells' synthetic twins are written to find their longest examples")
    estimate.add_argument("--out", type=Path, metavar="FILE.md",
                          help="also write the table as a markdown report (predicted beside documented, with what "
                               "each number is)")
    estimate.set_defaults(func=cmd_estimate)

    run = sub.add_parser("run", help="run a grid's cells")
    run.add_argument("matrix")
    run.add_argument("--profile", help="a profile of the grid (e.g. tiny)")
    run.add_argument("--results", type=Path, default=Path("results/runs"), help="results root (default results/runs)")
    run.add_argument("--group", help="results group (default: this machine, e.g. 8xA100 or cpu)")
    run.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    run.add_argument("--repeats", type=int, default=1, help="each cell N times with consecutive seeds")
    run.add_argument("--max-cells", type=positive(int), default=MAX_CELLS,
                     help=f"refuse a grid that expands to more cells (default {MAX_CELLS:,})")
    run.add_argument("--force", action="store_true", help="rerun cells that already have a final row")
    run.add_argument("--wait", action="store_true",
                     help="when another runner holds the results group, wait for it instead of refusing")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun only the cells whose final row is error, timeout, oom or diverged")
    run.add_argument("--keep-model", action="store_true",
                     help="each cell keeps its trained model (full, frozen_vision: official layout) or adapter (lora, "
                          "qlora: peft layout) in cells/<run_id>/model; cells already recorded need --force")
    run.add_argument("--timeout", type=positive(float), help="per-cell timeout in seconds (default: the grid's limits)")
    run.add_argument("--allow-hardware-mismatch", action="store_true",
                     help="run although this machine does not match the grid's GPU type or count")
    run.add_argument("--nnodes", type=positive(int), default=1,
                     help="nodes of a multi-node run (start the same command on each)")
    run.add_argument("--node-rank", type=ranged(0, 1023), default=0, help="this node's rank, 0 .. --nnodes - 1")
    run.add_argument("--master-addr", help="the first node's address (multi-node)")
    run.add_argument("--master-port", type=ranged(1, 65535),
                     help="rendezvous port (local multi-node default 29500; SLURM default: one per job, from its id)")
    from harness.run.launchers import NAMES as LAUNCHERS  # names only: no launcher is imported for the parser

    run.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local",
                     help="how each cell runs: local (torchrun here) or slurm (one sbatch job per cell)")
    run.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH directive, e.g. --partition=gpu")
    run.add_argument("--slurm-shared", action="store_true",
                     help="SLURM: let a cell's job share its nodes with other jobs (default: its nodes to itself, so "
                          "that nothing else runs beside a measurement)")
    run.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=None,
                     help="predict each cell's peak memory before it starts and record it in its row (default: for "
                          "GPU cells; see `harness estimate`)")
    oom = run.add_mutually_exclusive_group()
    oom.add_argument("--skip-predicted-oom", dest="skip_predicted_oom", action="store_true", default=None,
                     help="record a cell predicted not to fit its GPU as `unsupported` (a prediction) instead of "
                          "running it (the default under SLURM)")
    oom.add_argument("--run-predicted-oom", dest="skip_predicted_oom", action="store_false",
                     help="run (or submit) a cell even when it is predicted not to fit")
    run.add_argument("--track", action="append", choices=("mlflow", "tensorboard"), default=[],
                     help="send each cell to an experiment tracker while it trains (repeatable): MLflow "
                          "(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME; default an sqlite store in --results) or "
                          "TensorBoard (TENSORBOARD_LOGDIR; default <results>/tensorboard); a tracker that fails never "
                          "fails a cell (`harness track` sends its rows later)")
    run.add_argument("--dry-run", action="store_true", help="print commands / write sbatch scripts, run nothing")
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser("tune", help="the fastest configuration of each cell that fits its GPU (engine, "
                                       "checkpointing, micro-batch, attention), predicted then measured in trials")
    tune.add_argument("matrix", help="a grid file or a shipped grid's NAME")
    tune.add_argument("--profile", help="a profile of the grid")
    tune.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    tune.add_argument("--gpu", type=nonempty, help="tune for this GPU of the catalogue (default: the cells' own)")
    tune.add_argument("--memory-gib", type=positive(float),
                      help="the memory budget in GiB (default: the GPU's; needed on a CPU, where the CPU allocator's "
                           "peak is checked against it)")
    tune.add_argument("--trials", type=ranged(0, 64), default=3,
                      help="measured candidates per cell beside the recipe's own configuration (default 3)")
    tune.add_argument("--engine", action="append", default=[], metavar="NAME",
                      choices=("ddp", "zero1", "zero2", "zero3", "fsdp2"), help="search only these engines")
    tune.add_argument("--checkpointing", action="append", default=[], metavar="POLICY",
                      help="search only these activation-checkpointing policies (all, none, every-K)")
    tune.add_argument("--max-micro-batch", type=positive(int), default=8,
                      help="the largest per-device micro-batch tried (default 8)")
    tune.add_argument("--budget-s", type=positive(float), help="wall-clock seconds for the trials (the rest are "
                                                                "not run; rerun to go on)")
    tune.add_argument("--predict-only", action="store_true",
                      help="rank by prediction only (no GPU needed): the candidates, their fit and predicted speed")
    tune.add_argument("--results", type=Path, default=Path("results/runs"), help="results root of the trials")
    tune.add_argument("--group", help="results group of the trials (default: this machine)")
    tune.add_argument("--timeout", type=positive(float), help="per-trial timeout in seconds")
    tune.add_argument("--launcher", choices=("local", "slurm"), default="local", help="how each trial runs")
    tune.add_argument("--allow-hardware-mismatch", action="store_true",
                      help="run the trials although this machine does not match the grid's GPUs")
    tune.add_argument("--out", type=Path, metavar="FILE.yaml",
                      help="the tuned grid (default matrices/tuned/<grid>-<gpu>.yaml)")
    tune.add_argument("--report", type=Path, metavar="FILE.md",
                      help="the recipe-vs-tuned report (default reports/tune/<grid>-<gpu>.md)")
    tune.add_argument("--data-root", type=Path, default=ESTIMATE_DATA,
                      help="where the estimator writes the cells' synthetic twins")
    tune.set_defaults(func=cmd_tune)


def _grid(args, **extra):
    from harness.grid.file import load_grid
    from harness.paths import grid_path

    return load_grid(grid_path(args.matrix), args.profile, **extra)


def cmd_plan(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness import plan as planning
    from harness.grid.preflight import check_models
    from harness.grid.select import check_selection, matches, parse_filters
    from harness.outputs import plain

    grid = _grid(args, repeats=args.repeats, max_cells=args.max_cells)
    filters = parse_filters(args.filter)
    check_selection(grid, filters, to_run=False)
    cells = [c for c in grid.cells if not c.runnable or matches(c, filters)]
    if args.json:
        specs = [{**c.spec.model_dump(mode="json"), "run_id": c.spec.run_id} for c in cells if c.runnable]
        print(json.dumps(specs, indent=2))
        return 0
    console = Console(highlight=False, width=200)
    console.print(f"[bold]{grid.name}[/bold]{' (profile ' + grid.profile + ')' if grid.profile else ''}: "
                  f"{escape(plain(grid.file.description.strip()))}")
    for patch in grid.patches:
        settings = ", ".join(f"{k}={v}" for k, v in patch.set.items())
        console.print(escape(plain(f"  profile patch: cells with {patch.match} get {settings}"
                                   + (f" ({patch.reason})" if patch.reason else ""))))
    if args.estimate:
        check_models(cells)
    predicted = planning.predicted_peaks(cells) if args.estimate else None
    table = Table(show_lines=False)
    for column in (*planning.PLAN_COLUMNS, *(["predicted peak"] if args.estimate else [])):
        table.add_column(column)
    for row in planning.plan_rows(cells, predicted):
        table.add_row(*[escape(plain(value)) for value in row])
    console.print(table)
    console.print("[bold]launch commands[/bold] (results/runs/<matrix>/<group>/cells/<run_id>/):")
    for index, command in planning.launch_commands(grid, cells):
        console.print(f"  cell {index}: " + escape(command), soft_wrap=True)
    return 0


def cmd_estimate(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness import outputs
    from harness import plan as planning
    from harness.grid.preflight import check_models
    from harness.grid.select import check_selection, matches, parse_filters
    from harness.outputs import plain
    from harness.report.documented import load_references
    from training_core.estimate.fit import GIB, MARGIN_RULE

    if args.rows is not None:
        return _estimate_rows(args)
    if args.matrix is None:
        raise outputs.OutputError("estimate: give a grid (a file or a shipped grid's NAME), or --rows GROUP")
    if args.force:
        raise outputs.OutputError("estimate: --force goes with --rows GROUP")
    if args.out is not None:
        outputs.check(args.out)
    grid = _grid(args)
    filters = parse_filters(args.filter)
    check_selection(grid, filters, to_run=False)
    if args.data_root.exists() and not args.data_root.is_dir():
        raise outputs.OutputError(f"--data-root {args.data_root}: not a directory; give a folder where the estimator "
                                  "may write the cells' synthetic twins")
    check_models([c for c in grid.cells if c.runnable and matches(c, filters)])
    console = Console(highlight=False, width=240)

    def progress(entry):
        if not args.json:
            p = entry["predicted"]
            console.print(f"  cell {entry['cell']}: {p['peak_bytes'] / GIB:.2f} GiB at the {p['phase']} "
                          f"({p['seconds']:.0f} s)")

    out = planning.estimate_grid(grid, filters, args.gpu, args.data_root, progress)
    refs = load_references()
    if args.out is not None:
        outputs.write(args.out, planning.markdown(grid, out, refs), marked=True)
    failed = 1 if any(e["status"] == "error" for e in out) else 0
    if args.json:
        print(json.dumps({"grid": grid.name, "profile": grid.profile, "margin_rule": MARGIN_RULE, "cells": out},
                         indent=1))
        return failed
    header, body = planning.rows(out, refs)
    table = Table(title=escape(f"{grid.name}: predicted peak allocated memory per rank (GiB)"))
    for column in header:
        table.add_column(escape(column))
    for row in body:
        table.add_row(*[escape(plain(v)) for v in row])
    console.print(table)
    for line in (f"Predicted: {planning.PREDICTED_IS}.", f"Documented: {planning.DOCUMENTED_IS}.",
                 f"Margin rule: {MARGIN_RULE}.", *[f"  cell {e['cell']}: {e['reason']}" for e in out if "reason" in e],
                 *([f"wrote {args.out}"] if args.out is not None else [])):
        console.print(escape(plain(line)))
    return failed


def _estimate_rows(args) -> int:
    """`estimate --rows GROUP`: predictions for recorded rows, made afterwards (harness/later_predictions.py)."""
    from harness import outputs
    from harness.later_predictions import predict_rows
    from training_core.estimate.fit import GIB

    extra = [name for name, given in (("a grid", args.matrix), ("--profile", args.profile), ("--filter", args.filter),
                                      ("--gpu", args.gpu), ("--out", args.out), ("--json", args.json)) if given]
    if extra:
        raise outputs.OutputError(f"estimate --rows: {', '.join(extra)} do(es) not go with --rows (the rows' own "
                                  "specs and GPUs are used; read the predictions with `harness report GROUP`)")

    def progress(entry):
        if "error" in entry:
            print(f"  {entry['run_id']} (cell {entry['cell']}): not estimated: {entry['error']}", flush=True)
        else:
            p = entry["predicted"]
            print(f"  {entry['run_id']} (cell {entry['cell']}): {p['peak_bytes'] / GIB:.2f} GiB at the {p['phase']} "
                  f"({p['seconds']:.0f} s)", flush=True)

    out, left = predict_rows(args.rows, args.data_root, args.force, progress)
    made = sum("predicted" in e for e in out)
    print(f"{made} prediction(s) added to {args.rows / 'predicted.jsonl'}; {len(out) - made} failed; "
          f"{len(left)} row(s) left out ({'; '.join(left[:5])}{' ...' if len(left) > 5 else ''})")
    return 1 if made < len(out) else 0


def cmd_run(args) -> int:
    from rich.console import Console

    from harness.grid import hardware
    from harness.grid.select import parse_filters
    from harness.run.options import Nodes, RunOptions
    from harness.run.prepare import prepare
    from harness.run.runner import Runner

    machine = hardware.detect()
    grid = _grid(args, repeats=args.repeats, machine=machine, max_cells=args.max_cells)
    options = RunOptions(results=args.results, group=args.group, force=args.force, filters=parse_filters(args.filter),
                         timeout_s=args.timeout, nodes=Nodes(args.nnodes, args.node_rank, args.master_addr,
                                                             args.master_port or 29500),
                         master_port=args.master_port, slurm_shared=args.slurm_shared,
                         launcher=args.launcher, dry_run=args.dry_run, sbatch_args=tuple(args.sbatch_arg),
                         check_hardware=not args.allow_hardware_mismatch, retry_failed=args.retry_failed,
                         wait=args.wait, keep_model=args.keep_model, estimate=args.estimate,
                         skip_predicted_oom=args.skip_predicted_oom, track=tuple(dict.fromkeys(args.track)))
    refusal = prepare(grid, options, machine)
    if refusal:
        from harness.outputs import plain

        print(f"error: {plain(refusal)}", file=sys.stderr)
        return 2
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    runner = Runner(grid, options, machine, console)
    outcome = runner.run()
    _print_outcome(console, outcome, runner, grid, args.dry_run)
    if outcome.interrupted_by is not None:
        return 128 + int(outcome.interrupted_by)  # 130 after Ctrl-C, 143 after SIGTERM, as the shell reports
    return 1 if outcome.failed else 0


def _print_outcome(console, outcome, runner, grid, dry_run: bool) -> None:
    from rich.markup import escape

    from harness.outputs import plain
    from harness.run.console import print_summary

    if outcome.main_node and not dry_run and (runner.launcher.waits or outcome.rows):
        print_summary(console, outcome.store, grid)
    for cell, job, state, why in outcome.waiting:  # queued jobs that have not ended, with the scheduler's reason
        console.print(escape(plain(f"  cell {cell.index}: job {job} {state.lower()}" + (f" ({why})" if why else "")
                                   + "; run this command again once it has ended to record its row")))
    for problem in outcome.problems:
        print(f"error: {plain(problem)}", file=sys.stderr)
    if outcome.kept_failures:
        cells = ", ".join(f"{c.index} ({status})" for c, status in outcome.kept_failures)
        console.print(f"[red]{len(outcome.kept_failures)} cell(s) failed in an earlier run and were not rerun: "
                      f"{cells}; --retry-failed reruns only those, --force reruns every cell[/red]")


def cmd_tune(args) -> int:
    import re

    from rich.console import Console

    from harness import outputs
    from harness.grid import hardware
    from harness.grid.select import check_selection, parse_filters
    from harness.outputs import plain
    from harness.paths import ROOT
    from harness.run.options import RunOptions
    from harness.tune import output, search
    from training_core.spec import CHECKPOINTING_PATTERN

    for policy in args.checkpointing:
        if not re.fullmatch(CHECKPOINTING_PATTERN, policy):
            raise outputs.OutputError(f"--checkpointing {policy!r}: use all, none or every-K (K >= 2)")
    if args.report is not None:
        outputs.check(args.report, "--report")
    if args.out is not None:
        output.check_grid_out(args.out)
    machine = hardware.detect()
    grid = _grid(args, machine=machine)
    filters = parse_filters(args.filter)
    check_selection(grid, filters)
    gpu = args.gpu or grid.file.hardware.gpu
    options = search.TuneOptions(gpu=args.gpu, memory_gib=args.memory_gib, trials=args.trials,
                                 engines=tuple(args.engine), policies=tuple(args.checkpointing),
                                 max_micro_batch=args.max_micro_batch, predict_only=args.predict_only,
                                 budget_s=args.budget_s, data_root=args.data_root)
    run_options = RunOptions(results=args.results, group=args.group, timeout_s=args.timeout, launcher=args.launcher,
                             check_hardware=not args.allow_hardware_mismatch, estimate=False,
                             skip_predicted_oom=False)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    print(plain(output.SAME_MODEL), flush=True)
    try:
        record = search.tune_grid(grid, filters, options, run_options, machine, console,
                                  progress=lambda line: print(plain(line), flush=True))
    except KeyboardInterrupt:  # between trials or while predicting: the finished trials' rows and traces are kept
        print("interrupted: the finished trials and predictions are kept; run the same command again to go on",
              file=sys.stderr)
        return 130
    grid_out, report_out = output.default_paths(grid, gpu, ROOT)
    grid_out, report_out = args.out or grid_out, args.report or report_out
    outputs.write(report_out, output.report(grid, record, gpu), marked=True)
    print(f"wrote {report_out}")
    if not args.predict_only:
        outputs.write(args.results / f"{grid.name}-tune" / f"tune-{gpu}.json",
                      json.dumps(output.summary_record(record), indent=1, default=str))
        outputs.write(grid_out, output.tuned_grid(grid, record, gpu))
        print(f"wrote {grid_out}")
    for entry in record["cells"]:
        s = entry["summary"]
        best = next((j for j in entry["judged"] if j.fits and j.seconds is not None), None)
        chosen = (f"best predicted: {best.candidate.label}" if args.predict_only else
                  f"winner: {entry.get('winner') or 'none (no measured candidate fits)'}") if best or not \
            args.predict_only else "nothing predicted to fit"
        print(plain(f"cell {entry['cell']}: {s['candidates']} candidates, {s['dropped']} dropped by memory "
                    f"({s['rule']}); {chosen}"))
    if record.get("interrupted"):
        return 130
    return 0
