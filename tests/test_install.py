"""Issue 32 (1-3): the install choices of `make setup` (CUDA=, TORCH=system, WHEELS=) and `make wheelhouse`, read
from make's own dry run (what would be executed) and, where it is cheap, run for real (a refused choice creates
nothing; TORCH=system on an interpreter without torch says so)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = next(line.split("==")[1] for line in (ROOT / "constraints.txt").read_text().splitlines()
           if line.startswith("torch=="))

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry(*args: str, venv: Path) -> list[str]:
    out = subprocess.run(["make", "-n", *args, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_cuda_takes_the_pinned_torch_from_that_cudas_index(tmp_path):
    lines = dry("setup", "CUDA=cu126", venv=tmp_path / "v")
    assert any(f'--index-url https://download.pytorch.org/whl/cu126 "torch=={PIN}"' in line for line in lines), lines
    assert any("-c constraints.txt -e '.[dev]'" in line for line in lines)
    assert not any("download.pytorch.org" in line for line in dry("setup", venv=tmp_path / "v"))  # the CPU default


def test_wheels_install_without_any_index_and_the_choice_is_kept_for_later_targets(tmp_path):
    lines = dry("setup", "CUDA=cu130", "WHEELS=/w", venv=tmp_path / "v")
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("--no-index --find-links /w" in line for line in installs), installs
    assert not any("--upgrade pip" in line or "download.pytorch.org" in line for line in lines)
    assert any('"cu130" "" "/w" > ' in line and "install.mk" in line for line in lines)
    venv = tmp_path / "kept"
    venv.mkdir()
    (venv / "install.mk").write_text("CUDA ?= \nTORCH ?= system\nWHEELS ?= \n")
    assert any("--system-site-packages" in line for line in dry("setup", venv=venv))  # `make test` later keeps it


def test_a_wheelhouse_is_for_the_named_python_with_deepspeed_built(tmp_path):
    lines = " ".join(dry("wheelhouse", "WHEELHOUSE_PYTHON=3.12", "WHEELHOUSE=/wh", venv=tmp_path / "v"))
    assert "pip download" in lines and "--python-version 3.12" in lines and "--only-binary=:all:" in lines
    assert "pip wheel --quiet --no-deps --wheel-dir /wh -c constraints.txt deepspeed" in lines


def test_an_unknown_choice_is_refused_before_anything_is_created(tmp_path):
    for args, said in ((["CUDA=cu999"], "CUDA=cu999: give cu126, cu128 or cu130"),
                       (["TORCH=conda"], "TORCH=conda: the only choice is TORCH=system"),
                       (["CUDA=cu126", "TORCH=system"], "CUDA= and TORCH=system exclude each other")):
        out = subprocess.run(["make", "setup", *args, f"VENV={tmp_path / 'v'}"], cwd=ROOT, capture_output=True,
                             text=True)
        assert out.returncode != 0 and said in out.stderr, (args, out.stderr)
        assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_torch_system_on_an_interpreter_without_torch_says_so(tmp_path):
    python = shutil.which("python3")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this machine's python3 has torch")
    out = subprocess.run(["make", "setup", "TORCH=system", f"PYTHON={python}", f"VENV={tmp_path / 'v'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "has no torch in its site packages; drop TORCH=system" in out.stderr, out.stderr
    assert not (tmp_path / "v" / ".installed").exists()
