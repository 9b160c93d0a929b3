"""`harness doctor | export`: what this machine can run, and a cell's kept model written where other tools load it
(both import the ML stack when they run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add(sub) -> None:
    doctor = sub.add_parser("doctor", help="what this machine can run (GPUs, kernels, packages, cells) and what "
                                           "to install; exit 1 when a check failed (absent parts are not failures)")
    doctor.add_argument("--json", action="store_true", help="the checks as JSON")
    doctor.add_argument("--save-json", type=Path, metavar="FILE",
                        help="also write the checks as JSON to FILE (one run of the probes for both)")
    doctor.set_defaults(func=cmd_doctor)

    export = sub.add_parser("export", help="write a cell's kept model or adapter where other tools load it")
    export.add_argument("cell_dir", type=Path, help="results/runs/<matrix>/<group>/cells/<run_id> (run with --keep-model)")
    export.add_argument("--out", type=Path, required=True, help="a new (or empty) directory")
    export.add_argument("--merge", action="store_true",
                        help="lora/qlora: apply the adapter to its (unquantised) base and write the merged model")
    export.set_defaults(func=cmd_export)


def cmd_doctor(args) -> int:
    from rich.console import Console

    from harness import outputs
    from harness.doctor import as_json, print_report, run_checks

    if args.save_json is not None and (args.save_json.is_symlink() or args.save_json.is_dir()
                                       or not args.save_json.parent.is_dir()):
        raise outputs.OutputError(f"--save-json {args.save_json}: give a file name in an existing folder (not a "
                                  "directory or a symbolic link)")
    report = run_checks()
    if args.save_json is not None:
        outputs.write(args.save_json, json.dumps(as_json(report), indent=2) + "\n")
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print_report(report, Console(highlight=False, width=None if sys.stdout.isatty() else 180))
    failed = [c.name for c in report["checks"] if c.status == "fail"]
    if failed:  # a probe that ran and went wrong (a kernel raised or computed wrong numbers); absent parts are not
        print(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    from training_core.export import export as write_model

    print(f"wrote {write_model(args.cell_dir, args.out, merge=args.merge)}")
    return 0
