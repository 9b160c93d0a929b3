"""A results group written before the harness moved into stages (tests/fixtures/before_stages: two tiny LoRA cells
run, reported and compared by commit 5a9b905, the data twins left out) reports, compares and resumes the same after
the move: the report is byte-identical, the comparison's findings are the same, and a rerun skips both cells as done
without adding or changing a row."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "before_stages"


def _group(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "results", tmp_path / "results")
    return tmp_path / "results" / "before_stages" / "cpu"


def test_a_group_from_before_reports_the_same(tmp_path, capsys):
    from harness.cli import main

    group = _group(tmp_path)
    assert main(["report", str(group), "--out", str(tmp_path / "out" / "before_stages.md"), "--no-plots"]) == 0
    assert (tmp_path / "out" / "before_stages.md").read_text() == (FIXTURE / "report.md").read_text()


def test_a_group_from_before_compares_the_same(tmp_path, capsys):
    from harness.cli import main

    group = _group(tmp_path)
    assert main(["compare", str(group), str(group)]) == 0
    now = capsys.readouterr().out.rstrip("\n").splitlines()  # print adds a newline to the markdown's own
    before = (FIXTURE / "compare.md").read_text().splitlines()
    assert now[0].startswith("# Regression check: ") and before[1].startswith("# Regression check: ")  # paths differ
    assert now[1:] == before[2:]  # the old file starts with the harness's mark line


def test_a_group_from_before_resumes_with_every_cell_done(tmp_path, capsys):
    from harness.cli import main

    group = _group(tmp_path)
    rows = (group / "rows.jsonl").read_bytes()
    assert main(["run", str(FIXTURE / "before_stages.yaml"), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert out.count("done (ok); --force reruns it") == 2 and "[1/" not in out  # the same run ids: nothing to run
    assert (group / "rows.jsonl").read_bytes() == rows
