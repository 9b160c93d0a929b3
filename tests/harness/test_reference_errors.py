"""A malformed table of documented numbers (results/reference/*.yaml) is the user's to fix: `report` says
`error: ...` naming the file and the key, exit 2, never a traceback (it was once a `ReferenceError` that shadowed the
builtin and was missing from the CLI's list of user errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import paths
from harness.report.documented import DocumentedError, load_references

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "before_stages"


@pytest.fixture
def references(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "reference"
    shutil.copytree(paths.REFERENCE, folder)
    monkeypatch.setattr(paths, "REFERENCE", folder)
    return folder


@pytest.mark.parametrize(("edit", "said"), [
    (lambda t: t.replace("images_per_s: 5.041", "images_per_s: fast", 1), "rows.0.images_per_s"),
    (lambda t: t.replace("table:", "tabel:", 1), "tabel: unknown key; a reference table has table, source"),
    (lambda t: t + "\n  - [unclosed\n", "invalid YAML"),
    (lambda t: "- just\n- a list\n", "a reference table is a YAML mapping"),
])
def test_a_malformed_reference_file_is_an_error_naming_file_and_key(references, tmp_path, capsys, edit, said):
    from harness.cli import main

    target = references / "speed_a100.yaml"
    target.write_text(edit(target.read_text()))
    with pytest.raises(DocumentedError, match=said):
        load_references()
    group = tmp_path / "results"
    shutil.copytree(FIXTURE / "results", group)
    assert main(["report", str(group / "before_stages" / "cpu"), "--out", str(tmp_path / "r.md"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}") and said in err and "Traceback" not in err
    assert not (tmp_path / "r.md").exists()
