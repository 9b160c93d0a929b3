import json
from pathlib import Path

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_data_synth_then_validate(tmp_path, capsys):
    out = tmp_path / "memes"
    assert main(["data", "synth", "hateful_memes", "--out", str(out), "--n-train", "4", "--n-eval", "2"]) == 0
    assert "wrote {'train': 4, 'eval': 2}" in capsys.readouterr().out
    assert main(["data", "validate", "hateful_memes", str(out), "--lengths", "--num-crops", "4"]) == 0
    printed = capsys.readouterr().out
    assert "hateful_memes train: 4 records, 4 images: OK" in printed
    assert "sequence length at num_crops 4" in printed


def test_validate_reports_problems_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "source": "s", "conversations": [
        {"images": ["../x.png"], "user": "q", "assistant": "a"}]}) + "\n")
    assert main(["data", "validate", "hateful_memes", str(tmp_path), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'train.jsonl'}:1:" in err and "escapes the image root" in err


def test_convert_ucf101_needs_a_source(tmp_path, capsys):
    assert main(["data", "convert", "ucf101", "--out", str(tmp_path)]) == 2
    assert "needs --src" in capsys.readouterr().err


def test_the_unit_tier_recognises_what_starts_cells():
    from tests.conftest import starts_cells

    assert starts_cells(["python", "-m", "training_core.run", "--spec", "s.json"])
    assert starts_cells(["python", "-m", "torch.distributed.run", "--standalone", "-m", "training_core.run"])
    assert starts_cells(["/venv/bin/torchrun", "--nproc_per_node=2", "x.py"])
    assert starts_cells(["python", "-m", "harness", "run", "cpu_smoke"])
    assert not starts_cells(["python", "-m", "harness", "run", "cpu_smoke", "--dry-run"])
    assert not starts_cells(["python", "-m", "harness", "plan", "a100_speed"])
    assert not starts_cells(["git", "rev-parse", "HEAD"])


def test_a_unit_test_that_starts_a_cell_fails_and_says_to_mark_it_slow(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the suite's conftest, imported by the inner run
    pytester.makeconftest("from tests.conftest import _the_unit_tier_starts_no_cells  # noqa: F401")
    pytester.makepyfile(test_probe='''
import subprocess, sys

import pytest


def test_unmarked():
    subprocess.run([sys.executable, "-m", "training_core.run", "--help"], capture_output=True)


@pytest.mark.slow
def test_marked():
    subprocess.run([sys.executable, "-c", "pass", "training_core.run"], check=True)
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not gpu")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked starts*mark it @pytest.mark.slow*"])
