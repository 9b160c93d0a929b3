"""`python -m tests.import_probe OUT.json ARGS...`: run `python -m harness ARGS...` in this process, then write the
names of every module it loaded (sys.modules at the end, `--help`'s exit included), its exit code and where the
`harness` package came from to OUT.json.
Deterministic: it records what was imported, not how long it took."""

from __future__ import annotations

import json
import sys


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    from harness.cli import main as harness_main

    try:
        code = harness_main(args)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    with open(out, "w") as handle:
        json.dump({"exit": code, "modules": sorted(sys.modules), "harness": sys.modules["harness"].__file__}, handle)


if __name__ == "__main__":
    main()
