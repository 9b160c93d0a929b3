"""`python -m harness ...` (also the `phi3v-bench` console script).

doctor         what this machine can run (GPUs, bf16, flash-attn, SDPA, bitsandbytes, DeepSpeed, NCCL, NVML, which
               cells of the shipped grids run here) and what to install
compare B C    regression gate: C against baseline B (exit 1 on a regression); several C: interleaved passes
export CELL    write a cell's kept model (official layout) or adapter (peft layout; --merge: folded into the base)
baseline DIR   store a clean run as a baseline
report DIR     markdown reports of stored rows beside the guide's documented numbers
plan MATRIX    the expanded cells of a grid (a table, or --json) and their launch commands; runs nothing
run MATRIX     run a grid's cells (one torchrun process group each), rows to results/runs/<matrix>/<group>/
data synth     write a synthetic twin of a task (deterministic by seed)
data convert   convert UCF-101 videos or a Hugging Face layout to the conversation-format jsonl
data validate  check every record of a dataset (file and line for each problem) and print its shape
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

# Nothing else at module level: each command imports what it needs when it runs, so `--help` and the light commands
# never load torch or transformers (tests/test_cli_imports.py holds this).

# The user-error types a command may raise (module, class): `error: ...` and exit 2 instead of a traceback.
USER_ERRORS = (("training_core.data.records", "DataError"), ("harness.matrix", "GridError"),
               ("harness.report", "ReportError"), ("harness.store", "StoreError"), ("harness.outputs", "OutputError"),
               ("training_core.spec", "SpecError"), ("training_core.model.weights", "WeightsError"))


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error types among the loaded modules: an exception of one of them can only come from a module that
    is loaded, so none needs importing here."""
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)


def _data_error(problems: list[str]) -> Exception:
    from training_core.data.records import DataError

    return DataError(problems)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="datasets: synthesise, convert, validate").add_subparsers(dest="data_cmd", required=True)

    synth = data.add_parser("synth", help="write a synthetic twin of a task")
    synth.add_argument("task")
    synth.add_argument("--out", required=True, type=Path, help="output directory")
    synth.add_argument("--n-train", type=int, default=200)
    synth.add_argument("--n-eval", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier output in --out")
    synth.set_defaults(func=_synth)

    convert = data.add_parser("convert", help="convert a dataset to the conversation-format jsonl")
    convert.add_argument("task", help="ucf101, docvqa, docvqa_full, hateful_memes or nlvr2")
    convert.add_argument("--out", required=True, type=Path, help="output directory")
    convert.add_argument("--src", type=Path, help="ucf101: the UCF101_subset directory or its .tar.gz")
    convert.add_argument("--data-dir", type=Path, help="HF layouts: a local save_to_disk or parquet directory "
                         "(default: the local Hugging Face cache)")
    convert.add_argument("--limit", type=int, help="convert only the first N records of each split")
    convert.add_argument("--allow-download", action="store_true", help="let the datasets library download")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(func=_convert)

    validate = data.add_parser("validate", help="check a dataset and print its shape")
    validate.add_argument("task")
    validate.add_argument("source", nargs="?", help="jsonl file or directory (default: the task's HF dataset in the cache)")
    validate.add_argument("--split", choices=("train", "eval", "both"), default="both")
    validate.add_argument("--lengths", action="store_true", help="also report training sequence lengths")
    validate.add_argument("--num-crops", type=_positive(int), help="for --lengths and the image checks (default: the task's)")
    validate.add_argument("--model", type=Path, help="for --lengths: a checkpoint dir whose tokenizer counts the "
                          "text (default: the tiny byte-level tokenizer, an upper bound on text tokens)")
    validate.set_defaults(func=_validate)


def _synth(args) -> int:
    from training_core.data.synth import synthesize

    counts = synthesize(args.task, args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                        overwrite=args.overwrite)
    print(f"wrote {counts} records of the {args.task} twin to {args.out}")
    return 0


def _convert(args) -> int:
    from training_core.data.convert import convert_hf, convert_ucf101

    if args.task == "ucf101":
        if args.src is None:
            raise _data_error(["convert ucf101 needs --src (the UCF101_subset directory or UCF101_subset.tar.gz)"])
        counts = convert_ucf101(args.src, args.out, overwrite=args.overwrite)
    else:
        counts = convert_hf(args.task, args.out, data_dir=args.data_dir, limit=args.limit,
                            overwrite=args.overwrite, allow_download=args.allow_download)
    print(f"converted {counts} records to {args.out}")
    return 0


def _validate(args) -> int:
    from training_core.data.sources import load_records
    from training_core.tasks import get_task

    task = get_task(args.task)
    splits = ("train", "eval") if args.split == "both" else (args.split,)
    for split in splits:
        records = load_records(task, split, args.source, num_crops=args.num_crops)
        n_images = sum(len(r.all_images) for r in records) if isinstance(records, list) else None
        shown = f", {n_images} images" if n_images is not None else ""
        print(f"{task.name} {split}: {len(records)} records{shown}: OK")
        if args.lengths:
            print("  " + _lengths(task, records, args))
    return 0


def _lengths(task, records, args) -> str:
    from training_core.data.stats import sequence_length_stats
    from training_core.model import Phi3VProcessor, build_tiny_tokenizer
    from training_core.model.image_processing import Phi3VImageProcessor

    crops = args.num_crops or task.num_crops
    if args.model:
        processor = Phi3VProcessor.from_pretrained(args.model, num_crops=crops)
        note = f"tokenizer of {args.model}"
    else:
        processor = Phi3VProcessor(build_tiny_tokenizer(), Phi3VImageProcessor(num_crops=crops))
        note = "tiny byte-level tokenizer: text tokens are an upper bound"
    stats = sequence_length_stats(task, records, processor, num_crops=crops)
    return (f"sequence length at num_crops {crops} (336-pixel crops): mean {stats.mean:.2f}, "
            f"min {stats.minimum}, max {stats.maximum} over {stats.count} examples ({note})")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (value > 0 and math.isfinite(value)):  # NaN fails `> 0`
            raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _ranged(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low} .. {high}")
        return value
    parse.__name__ = f"number in {low} .. {high}"
    return parse


def _add_grid_commands(sub) -> None:
    from harness.limits import MAX_CELLS

    plan = sub.add_parser("plan", help="expand a grid and print its cells and launch commands")
    plan.add_argument("matrix", help="a grid file (matrices/NAME.yaml) or a shipped grid's NAME")
    plan.add_argument("--json", action="store_true", help="print the runnable cells as a JSON list of RunSpecs")
    plan.add_argument("--profile", help="a profile of the grid (e.g. tiny)")
    plan.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    plan.add_argument("--repeats", type=int, default=1, help="each cell N times with consecutive seeds")
    plan.add_argument("--max-cells", type=_positive(int), default=MAX_CELLS,
                      help=f"refuse a grid that expands to more cells (default {MAX_CELLS:,})")
    plan.add_argument("--estimate", action="store_true",
                      help="add each cell's predicted peak memory and its fit on the cell's GPU (loads torch; "
                           "`harness estimate` gives the breakdown)")
    plan.set_defaults(func=_plan)

    estimate = sub.add_parser("estimate", help="predict each cell's peak GPU memory per rank and whether it fits "
                                               "(one optimizer step traced with fake tensors; no GPU needed)")
    estimate.add_argument("matrix", help="a grid file or a shipped grid's NAME")
    estimate.add_argument("--profile", help="a profile of the grid")
    estimate.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    estimate.add_argument("--gpu", action="append", default=[], metavar="NAME",
                          help="judge the fit on this GPU (repeatable; default: the cell's own GPU), e.g. A100, "
                               "H100, V100")
    estimate.add_argument("--json", action="store_true", help="the predictions as JSON")
    estimate.add_argument("--data-root", type=Path, default=Path("build/estimate"),
                          help="where the cells' synthetic twins are written to find their longest examples")
    estimate.add_argument("--out", type=Path, metavar="FILE.md",
                          help="also write the table as a markdown report (predicted beside documented, with what "
                               "each number is)")
    estimate.set_defaults(func=_estimate)

    run = sub.add_parser("run", help="run a grid's cells")
    run.add_argument("matrix")
    run.add_argument("--profile", help="a profile of the grid (e.g. tiny)")
    run.add_argument("--results", type=Path, default=Path("results/runs"), help="results root (default results/runs)")
    run.add_argument("--group", help="results group (default: this machine, e.g. 8xA100 or cpu)")
    run.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="select cells")
    run.add_argument("--repeats", type=int, default=1, help="each cell N times with consecutive seeds")
    run.add_argument("--max-cells", type=_positive(int), default=MAX_CELLS,
                     help=f"refuse a grid that expands to more cells (default {MAX_CELLS:,})")
    run.add_argument("--force", action="store_true", help="rerun cells that already have a final row")
    run.add_argument("--wait", action="store_true",
                     help="when another runner holds the results group, wait for it instead of refusing")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun only the cells whose final row is error, timeout, oom or diverged")
    run.add_argument("--keep-model", action="store_true",
                     help="each cell keeps its trained model (full, frozen_vision: official layout) or adapter (lora, "
                          "qlora: peft layout) in cells/<run_id>/model; cells already recorded need --force")
    run.add_argument("--timeout", type=_positive(float), help="per-cell timeout in seconds (default: the grid's limits)")
    run.add_argument("--allow-hardware-mismatch", action="store_true",
                     help="run although this machine does not match the grid's GPU type or count")
    run.add_argument("--nnodes", type=_positive(int), default=1,
                     help="nodes of a multi-node run (start the same command on each)")
    run.add_argument("--node-rank", type=_ranged(0, 1023), default=0, help="this node's rank, 0 .. --nnodes - 1")
    run.add_argument("--master-addr", help="the first node's address (multi-node)")
    run.add_argument("--master-port", type=_ranged(1, 65535),
                     help="rendezvous port (local multi-node default 29500; SLURM default: one per job, from its id)")
    from harness.launchers import NAMES as LAUNCHERS  # names only: no launcher is imported for the parser

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
    run.add_argument("--dry-run", action="store_true", help="print commands / write sbatch scripts, run nothing")
    run.set_defaults(func=_run)

    doctor = sub.add_parser("doctor", help="what this machine can run (GPUs, kernels, packages, cells) and what "
                                           "to install; exit 1 when a check failed (absent parts are not failures)")
    doctor.add_argument("--json", action="store_true", help="the checks as JSON")
    doctor.set_defaults(func=_doctor)

    export = sub.add_parser("export", help="write a cell's kept model or adapter where other tools load it")
    export.add_argument("cell_dir", type=Path, help="results/runs/<matrix>/<group>/cells/<run_id> (run with --keep-model)")
    export.add_argument("--out", type=Path, required=True, help="a new (or empty) directory")
    export.add_argument("--merge", action="store_true",
                        help="lora/qlora: apply the adapter to its (unquantised) base and write the merged model")
    export.set_defaults(func=_export)

    report = sub.add_parser("report", help="render markdown reports (measured beside documented) from stored rows")
    report.add_argument("results_dir", type=Path, help="a results group, matrix or root directory")
    report.add_argument("--out", type=Path, help="the markdown file (one group only; default reports/<matrix>/<group>.md)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    report.set_defaults(func=_report)

    compare = sub.add_parser("compare", help="regression gate: compare a run against a baseline")
    compare.add_argument("baseline", help="a baseline results group, or a baselines root (results/baselines)")
    compare.add_argument("current", nargs="+", type=Path,
                         help="the current results group (results/runs/<matrix>/<group>); several: one per pass")
    compare.add_argument("--rules", type=Path, help="tolerances and ordering rules (YAML)")
    compare.add_argument("--out", type=Path, help="also write the markdown summary here")
    compare.set_defaults(func=_compare)

    baseline = sub.add_parser("baseline", help="store a clean run as the baseline for its grid, model and hardware")
    baseline.add_argument("group", type=Path, nargs="+", help="the results group to store; several: one per pass")
    baseline.add_argument("--root", type=Path, default=Path("results/baselines"))
    baseline.add_argument("--replace", action="store_true",
                          help="replace the baseline already stored for this grid, model and hardware")
    baseline.set_defaults(func=_baseline)


def _doctor(args) -> int:
    from rich.console import Console

    from harness.doctor import as_json, print_report, run_checks

    report = run_checks()
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print_report(report, Console(highlight=False, width=None if sys.stdout.isatty() else 180))
    failed = [c.name for c in report["checks"] if c.status == "fail"]
    if failed:  # a probe that ran and went wrong (a kernel raised or computed wrong numbers); absent parts are not
        print(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _check_writable(directory: Path) -> None:
    """Refuse a results directory that cannot be written before anything runs."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise _data_error([f"--results {directory}: cannot write there ({exc.strerror or exc}); choose a writable "
                            "directory"]) from None


def _report(args) -> int:
    from harness.report import REPORTS, check_out, default_out, group_dirs, index_path, render, write_index

    groups = group_dirs(args.results_dir)
    if args.out and len(groups) > 1:
        raise _data_error([f"--out names one file but {args.results_dir} holds {len(groups)} groups; drop --out"])
    targets = [check_out(args.out or default_out(group)) for group in groups]  # all refused before any is written
    index_path(args.out.parent if args.out else REPORTS)
    for group, target in zip(groups, targets, strict=True):
        out = render(group, target, plots=not args.no_plots)
        print(f"wrote {out}")
    # the index of every report beside them: reports/index.md (with --out: in that file's folder)
    print(f"wrote {write_index(args.out.parent if args.out else REPORTS)}")
    return 0


def _export(args) -> int:
    from training_core.export import ExportError, export

    try:
        print(f"wrote {export(args.cell_dir, args.out, merge=args.merge)}")
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _compare(args) -> int:
    from harness import outputs
    from harness.compare import (
        CompareError,
        baseline_key,
        compare_rows,
        find_baseline,
        load_passes,
        load_rows,
        load_rules,
        render_markdown,
    )

    if args.out:
        outputs.check(args.out)
    try:
        current_rows = load_passes(args.current)
        baseline_dir = find_baseline(Path(args.baseline), current_rows)
        baseline_rows = load_rows(baseline_dir)
        ran_on = [baseline_key(rows).split("/", 1)[1] for rows in (baseline_rows, current_rows)]
        if ran_on[0] != ran_on[1]:  # a group given directly is checked as a baselines root's key would be
            raise CompareError(f"{baseline_dir} ran {ran_on[0]} and {', '.join(map(str, args.current))} ran "
                               f"{ran_on[1]} (model-GPUxcount): not comparable; compare runs of the same model on the "
                               "same hardware")
        result = compare_rows(baseline_rows, current_rows, load_rules(args.rules))
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = render_markdown(result, baseline_dir, ", ".join(map(str, args.current)))
    if args.out:
        outputs.write(args.out, text, marked=True)
    print(text)
    return 1 if result.failed else 0


def _baseline(args) -> int:
    from harness.compare import CompareError, baseline_key, load_passes
    from training_core.result import dumps

    try:
        rows = load_passes(args.group)
    except CompareError as exc:
        raise _data_error([str(exc)]) from None
    bad = [r["run_id"] for r in rows if r["status"] != "ok"]
    if bad:
        raise _data_error([f"{', '.join(map(str, args.group))}: cells {bad} did not finish ok; a baseline must be a "
                            "clean run"])
    keys = {baseline_key([row]) for row in rows}
    if len(keys) > 1:
        raise _data_error([f"{', '.join(map(str, args.group))}: the groups are runs of different grids, models or "
                            f"hardware ({', '.join(sorted(keys))}); store one baseline at a time"])
    from harness.store import StoreError, check_component

    key = baseline_key(rows)
    for part in key.split("/", 1):  # the grid's name, then model-GPUxN: one folder each, inside --root
        try:
            check_component(part, "the baseline's folder")
        except StoreError as exc:
            raise _data_error([f"{args.group[0]}: {exc} (from the rows' matrix, model and GPUs)"]) from None
    if args.root.exists() and not args.root.is_dir():
        raise _data_error([f"--root {args.root}: not a directory"])
    target = args.root / key
    if (target / "rows.jsonl").exists() and not args.replace:
        raise _data_error([f"{target}: a baseline is already stored for {key}; pass --replace to replace it "
                           "(compare the new run against it first: harness compare)"])
    from harness import outputs

    outputs.write(target / "rows.jsonl", "".join(dumps(row) + "\n" for row in rows))  # whole, never through a link
    if (args.group[0] / "env.json").is_file():
        outputs.write(target / "env.json", (args.group[0] / "env.json").read_text())
    passes = len(args.group)
    print(f"baseline {baseline_key(rows)}: {len(rows)} rows ({passes} pass{'es' if passes > 1 else ''}) written to "
          f"{target}")
    return 0


def _grid_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return Path(__file__).resolve().parent.parent / "matrices" / f"{name}.yaml"


def _filters(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _data_error([f"--filter {item!r}: expected KEY=VALUE, e.g. --filter strategy=lora"])
        out[key] = value
    return out


def _estimate(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness import estimates
    from harness.matrix import load_grid
    from harness.reference import load_references
    from harness.runner import check_selection
    from training_core.estimate.fit import GIB, MARGIN_RULE

    if args.out is not None:
        from harness import outputs

        outputs.check(args.out)
    grid = load_grid(_grid_path(args.matrix), args.profile)
    filters = _filters(args.filter)
    check_selection(grid, filters, to_run=False)
    console = Console(highlight=False, width=240)

    def progress(entry):
        if not args.json:
            p = entry["predicted"]
            console.print(f"  cell {entry['cell']}: {p['peak_bytes'] / GIB:.2f} GiB at the {p['phase']} "
                          f"({p['seconds']:.0f} s)")

    out = estimates.estimate_grid(grid, filters, args.gpu, args.data_root, progress)
    refs = load_references()
    if args.out is not None:
        outputs.write(args.out, estimates.markdown(grid, out, refs), marked=True)
    if args.json:
        print(json.dumps({"grid": grid.name, "profile": grid.profile, "margin_rule": MARGIN_RULE, "cells": out},
                         indent=1))
        return 1 if any(e["status"] == "error" for e in out) else 0
    header, body = estimates.rows(out, refs)
    table = Table(title=escape(f"{grid.name}: predicted peak allocated memory per rank (GiB)"))
    for column in header:
        table.add_column(escape(column))
    for row in body:
        table.add_row(*[escape(v) for v in row])
    console.print(table)
    console.print(escape(f"Predicted: {estimates.PREDICTED_IS}."))
    console.print(escape(f"Documented: {estimates.DOCUMENTED_IS}."))
    console.print(escape(f"Margin rule: {MARGIN_RULE}."))
    for e in out:
        if "reason" in e:
            console.print(escape(f"  cell {e['cell']}: {e['reason']}"))
    if args.out is not None:
        console.print(escape(f"wrote {args.out}"))
    return 1 if any(e["status"] == "error" for e in out) else 0


def _plan_estimates(cells) -> dict[int, str]:
    from training_core.estimate.fit import GIB, fits_for
    from training_core.estimate.trace import estimate_cell

    out = {}
    for c in cells:
        if not c.runnable:
            continue
        try:
            p = estimate_cell(c.spec, Path("build/estimate"))
        except Exception as exc:  # said in the cell's column
            out[c.index] = f"not estimated: {type(exc).__name__}"
            continue
        out[c.index] = f"{p['peak_bytes'] / GIB:.2f} GiB ({p['phase']})" + "".join(
            f", {gpu}: {verdict.reason}" for gpu, verdict in fits_for(p["peak_bytes"], c.spec.world_size,
                                                                      c.spec.gpu).items())
    return out


def _plan(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.launch import Nodes, shell, torchrun_command
    from harness.matrix import load_grid
    from harness.runner import check_selection, matches

    grid = load_grid(_grid_path(args.matrix), args.profile, args.repeats, max_cells=args.max_cells)
    filters = _filters(args.filter)
    check_selection(grid, filters, to_run=False)
    cells = [c for c in grid.cells if not c.runnable or matches(c, filters)]
    if args.json:
        specs = [{**c.spec.model_dump(mode="json"), "run_id": c.spec.run_id} for c in cells if c.runnable]
        print(json.dumps(specs, indent=2))
        return 0
    console = Console(highlight=False, width=200)
    console.print(f"[bold]{grid.name}[/bold]{' (profile ' + grid.profile + ')' if grid.profile else ''}: "
                  f"{escape(grid.file.description.strip())}")
    for patch in grid.patches:
        settings = ", ".join(f"{k}={v}" for k, v in patch.set.items())
        console.print(escape(f"  profile patch: cells with {patch.match} get {settings}"
                             + (f" ({patch.reason})" if patch.reason else "")))
    predicted = _plan_estimates(cells) if args.estimate else {}
    table = Table(show_lines=False)
    for column in ("#", "run_id", "task", "strategy", "precision", "attention", "nodes", "GPUs", "batch", "lr",
                   "crops", "reference", "status", *(["predicted peak"] if args.estimate else [])):
        table.add_column(column)
    for c in cells:
        s = c.spec
        if s is None:
            table.add_row(*map(escape, (str(c.index), "-", *[str(c.fields.get(k, "")) for k in ("task", "strategy",
                                                                                               "precision", "attention")],
                                        str(c.fields.get("nodes", "")), "", "", "", "", str(c.fields.get("reference", "")),
                                        f"{c.status}: {c.reason}", *([""] if args.estimate else []))))
            continue
        strategy = s.strategy + (f" (recipe {s.recipe_revision})" if s.revision != "current" else "")
        table.add_row(*map(escape, (str(c.index), s.run_id, s.task, strategy, s.precision, s.attention, str(s.nodes),
                                    str(s.world_size), str(s.global_batch), f"{s.lr:g}", str(s.num_crops or "task"),
                                    s.reference or "", "planned" if c.runnable else f"{c.status}: {c.reason}",
                                    *([predicted.get(c.index, "")] if args.estimate else []))))
    console.print(table)
    console.print("[bold]launch commands[/bold] (results/runs/<matrix>/<group>/cells/<run_id>/):")
    for c in cells:
        if not c.runnable:
            continue
        cell_dir = Path("results/runs") / grid.name / "<group>" / "cells" / c.spec.run_id
        nodes = Nodes() if c.spec.nodes == 1 else Nodes(c.spec.nodes, "$NODE_RANK", "$MASTER_ADDR", "$MASTER_PORT")
        console.print(f"  cell {c.index}: " + escape(shell(torchrun_command(c.spec, cell_dir / "spec.json", cell_dir,
                                                                              nodes, python="python"))), soft_wrap=True)
    return 0


def _run(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    from harness import hardware, launchers
    from harness.launch import Nodes
    from harness.matrix import load_grid
    from harness.runner import Runner, RunOptions, check_selection, matches
    from harness.summary import print_summary
    launcher = launchers.get(args.launcher)
    filters = _filters(args.filter)
    machine = hardware.detect()
    grid = load_grid(_grid_path(args.matrix), args.profile, args.repeats, machine=machine, max_cells=args.max_cells)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    hw = grid.file.hardware
    if args.group is not None:
        from harness.store import check_component

        check_component(args.group, "--group")
    options = RunOptions(results=args.results, group=args.group, force=args.force, filters=filters,
                         timeout_s=args.timeout, nodes=Nodes(args.nnodes, args.node_rank, args.master_addr,
                                                             args.master_port or 29500),
                         master_port=args.master_port, slurm_shared=args.slurm_shared,
                         launcher=args.launcher, dry_run=args.dry_run, sbatch_args=args.sbatch_arg,
                         check_hardware=not args.allow_hardware_mismatch, retry_failed=args.retry_failed,
                         wait=args.wait, keep_model=args.keep_model, estimate=args.estimate,
                         skip_predicted_oom=args.skip_predicted_oom)
    refused = launcher.refuse(grid, options)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    check_selection(grid, filters)
    problem = hardware.mismatch(machine, hw.gpu, hw.gpus_per_node) if launcher.hardware_here else None
    if problem and not args.allow_hardware_mismatch:
        print(f"error: {grid.path}: {problem}; pass --allow-hardware-mismatch to run anyway (rows record the "
              "hardware actually used)", file=sys.stderr)
        return 2
    from harness.preflight import missing_inputs

    problems = missing_inputs([c for c in grid.runnable if matches(c, filters)]) \
        if launcher.inputs_here and not args.dry_run else []
    if problems:
        print("error: the grid's inputs are not here:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 2
    if args.node_rank >= args.nnodes:
        print(f"error: --node-rank {args.node_rank} with --nnodes {args.nnodes}: a node's rank is 0 .. "
              f"{args.nnodes - 1}", file=sys.stderr)
        return 2
    if args.nnodes > 1 and not args.master_addr:
        print("error: --nnodes > 1 needs --master-addr (the first node's address)", file=sys.stderr)
        return 2
    if not args.dry_run:
        _check_writable(args.results)  # last: a refused run leaves no results directory behind
    # rows are grouped by the hardware that ran them (this machine's; under SLURM the grid's, e.g. 8xA100)
    runner = Runner(grid, options, launcher.group_label(machine, hw), console)
    rows = runner.run()
    if runner.main_node and not args.dry_run and (launcher.waits or rows):
        print_summary(console, runner.store, grid)
    for cell, job, state, why in runner.waiting:  # queued jobs that have not ended, with the scheduler's reason
        console.print(escape(f"  cell {cell.index}: job {job} {state.lower()}" + (f" ({why})" if why else "")
                             + "; run this command again once it has ended to record its row"))
    for problem in runner.problems:
        print(f"error: {problem}", file=sys.stderr)
    if runner.kept_failures:
        cells = ", ".join(f"{c.index} ({status})" for c, status in runner.kept_failures)
        console.print(f"[red]{len(runner.kept_failures)} cell(s) failed in an earlier run and were not rerun: "
                      f"{cells}; --retry-failed reruns only those, --force reruns every cell[/red]")
    if runner._interrupted:
        return 128 + int(runner.interrupted_by)  # 130 after Ctrl-C, 143 after SIGTERM, as the shell reports
    failed = any(r["status"] not in ("ok", "unsupported") for r in rows) or runner.kept_failures or runner.problems
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_grid_commands(sub)
    _add_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
