"""`harness report | compare | baseline`: the commands that read stored rows (never the ML stack). Each parses,
calls the library (harness.report, harness.gate), prints, and chooses the exit code."""

from __future__ import annotations

from pathlib import Path


def add(sub) -> None:
    report = sub.add_parser("report", help="render markdown reports (measured beside documented) from stored rows")
    report.add_argument("results_dir", type=Path, help="a results group, matrix or root directory")
    report.add_argument("--out", type=Path, help="the markdown file (one group only; default reports/<matrix>/<group>.md)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
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


def cmd_report(args) -> int:
    from harness.report.render import write_reports

    for path in write_reports(args.results_dir, args.out, plots=not args.no_plots):
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
