"""`harness report | compare | baseline | results | track`: the commands that read stored rows (never the ML stack).
Each parses, calls the library (harness.report, harness.gate, harness.results, harness.track), prints, and chooses
the exit code."""

from __future__ import annotations

from pathlib import Path


def add(sub) -> None:
    report = sub.add_parser("report", help="render markdown reports (measured beside documented) from stored rows")
    report.add_argument("results_dir", type=Path, help="a results group, matrix or root directory")
    report.add_argument("--out", type=Path, help="the markdown file (one group only; default reports/<matrix>/<group>.md)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    report.add_argument("--prices", type=Path, help="GPU-hour prices with sources (default results/prices.yaml)")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser("compare", help="regression gate: compare a run against a baseline")
    compare.add_argument("baseline", help="a baseline results group, or a baselines root (results/baselines)")
    compare.add_argument("current", nargs="+", type=Path,
                         help="the current results group (results/runs/<matrix>/<group>); several: one per pass")
    compare.add_argument("--rules", type=Path, help="tolerances and ordering rules (YAML)")
    compare.add_argument("--out", type=Path, help="also write the markdown summary here")
    compare.set_defaults(func=cmd_compare)

    baseline = sub.add_parser("baseline", help="store a clean run as the baseline for its grid, model and hardware")
    baseline.add_argument("group", type=Path, nargs="+", help="the results group to store; several: one per pass")
    baseline.add_argument("--root", type=Path, default=Path("results/baselines"))
    baseline.add_argument("--replace", action="store_true",
                          help="replace the baseline already stored for this grid, model and hardware")
    baseline.set_defaults(func=cmd_baseline)

    results = sub.add_parser("results", help="the rows as one table: CSV, Parquet or JSON lines (pandas)")
    results.add_argument("results_dir", type=Path, help="a results group, matrix or root directory")
    results.add_argument("--format", choices=("csv", "parquet", "jsonl"), help="default: from --out's name, else csv")
    results.add_argument("--out", type=Path, help="the file (default: CSV or JSON lines on stdout)")
    results.add_argument("--replace", action="store_true", help="write over an existing --out file")
    results.add_argument("--all-runs", action="store_true",
                         help="every stored row (reruns, interrupted attempts), not only each cell's newest")
    results.add_argument("--prices", type=Path, help="GPU-hour prices with sources (default results/prices.yaml)")
    results.set_defaults(func=cmd_results)

    track = sub.add_parser("track", help="send stored rows to an experiment tracker (each row once)")
    track.add_argument("results_dir", type=Path, help="a results group, matrix or root directory")
    track.add_argument("--to", required=True, choices=("mlflow", "tensorboard"),
                       help="MLflow (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME) or TensorBoard (TENSORBOARD_LOGDIR)")
    track.add_argument("--all-runs", action="store_true",
                       help="every stored row (reruns, interrupted attempts), not only each cell's newest")
    track.add_argument("--results-root", type=Path,
                       help="where a local default store goes (default: the folder that holds the grids' folders)")
    track.set_defaults(func=cmd_track)

    cost = sub.add_parser("cost", help="what the guide's documented configurations cost (GPU-hour prices with "
                                       "sources): $ per 1,000 images and per DocVQA fine-tune")
    cost.add_argument("--prices", type=Path, help="GPU-hour prices with sources (default results/prices.yaml)")
    cost.add_argument("--out", type=Path, default=Path("reports/cost/guide.md"), help="the markdown file")
    cost.set_defaults(func=cmd_cost)


def cmd_report(args) -> int:
    from harness.report.render import write_reports

    for path in write_reports(args.results_dir, args.out, plots=not args.no_plots, prices=args.prices):
        print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from harness import outputs
    from harness.gate.compare import check, render_markdown

    if args.out:
        outputs.check(args.out)
    result, baseline_dir = check(args.baseline, args.current, args.rules)
    text = render_markdown(result, baseline_dir, ", ".join(map(str, args.current)))
    if args.out:
        outputs.write(args.out, text, marked=True)
    print(text)
    return 1 if result.failed else 0


def cmd_baseline(args) -> int:
    from harness.gate.baseline import store_baseline

    key, target, count = store_baseline(args.group, args.root, replace=args.replace)
    passes = len(args.group)
    print(f"baseline {key}: {count} rows ({passes} pass{'es' if passes > 1 else ''}) written to {target}")
    return 0


def cmd_results(args) -> int:
    import sys

    from harness import outputs
    from harness.results import export, load_rows

    suffixes = {v: k for k, v in export.FORMATS.items()}
    fmt = args.format or (suffixes.get(args.out.suffix) if args.out else None) or "csv"
    if args.out:
        export.check_target(args.out, fmt, args.replace)
    elif fmt == "parquet":
        raise export.ExportError("--format parquet writes a file: give --out FILE.parquet")
    frame = load_rows(args.results_dir, all_runs=args.all_runs, prices=args.prices)
    data = export.to_bytes(frame, fmt)
    if args.out:
        outputs.write(args.out, data)
        print(f"wrote {args.out}: {len(frame)} rows x {len(frame.columns)} columns ({fmt})", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_track(args) -> int:
    from harness.track.send import send_stored

    outcome = send_stored(args.results_dir, args.to, all_runs=args.all_runs, results_root=args.results_root)
    for line in outcome.sent:
        print(f"sent {line}")
    print(f"{args.to} ({outcome.to}): {len(outcome.sent)} row(s) sent, {outcome.already} already there"
          + (f", {outcome.replaced} incomplete run(s) replaced" if outcome.replaced else ""))
    return 0


def cmd_cost(args) -> int:
    from harness.prices import load_prices
    from harness.report.cost import write_guide_report
    from harness.report.documented import load_references

    print(f"wrote {write_guide_report(args.out, load_references(), load_prices(args.prices))}")
    return 0
