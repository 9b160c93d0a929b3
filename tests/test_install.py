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
    assert any("-c constraints.txt -e '.[dev,track]'" in line for line in lines)
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


# ---------------------------------------------------------------- the carry folder for the stock GPU image
def _carry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("carry", ROOT / "scripts" / "carry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_carry_list_is_closed_over_its_dependencies_on_the_image():
    """Every requirement of every carried wheel (for Python 3.12 on Linux x86-64) is carried or on the image, so
    `pip install --no-index` there finds all it needs. Read from the installed metadata of the same versions (the
    suite's environment), which is checked too."""
    import importlib.metadata as md

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    carry = _carry()
    pins, image = carry.read_list()
    assert {"transformers", "pydantic", "bitsandbytes", "deepspeed", "rich"} <= set(pins)
    environment = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
                   "sys_platform": "linux", "platform_machine": "x86_64", "extra": ""}
    constraints = {carry.canonical(n): v for n, v in
                   (line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)}
    unmet = []
    for name, version in pins.items():
        assert md.version(name) == version, f"{name}: carried {version}, the suite runs {md.version(name)}"
        assert constraints.get(name, version) == version, f"{name}: carried {version}, constraints.txt pins " \
                                                          f"{constraints[name]}"
        for text in md.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            dep = carry.canonical(requirement.name)
            if dep not in pins and dep not in image:
                unmet.append(f"{name} needs {text}")
            elif dep in pins and not requirement.specifier.contains(pins[dep], prereleases=True):
                unmet.append(f"{name} needs {text}, the list carries {pins[dep]}")
    assert not unmet, unmet


def test_slimming_a_wheel_drops_only_what_it_says_and_rewrites_its_record(tmp_path):
    import zipfile

    carry = _carry()
    src = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libs = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026"]
    members = {f"bitsandbytes/libbitsandbytes_{lib}.so": lib.encode() * 100 for lib in libs}
    members["bitsandbytes/__init__.py"] = b"x = 1\n"
    record = "".join(f"{n},{carry._digest(d)},{len(d)}\n" for n, d in members.items())
    with zipfile.ZipFile(src, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record + "bitsandbytes-0.50.2.dist-info/RECORD,,\n")
    dst = tmp_path / "slim.whl"
    dropped = carry.slim_wheel(src, dst, carry.bnb_keep(13))
    assert sorted(n.split("_", 1)[1] for n, _ in dropped) == sorted(
        f"{lib}.so" for lib in ("cuda118", "cuda128", "rocm72", "xpu2026"))
    with zipfile.ZipFile(dst) as z:
        kept = set(z.namelist())
        listed = {line.split(",")[0] for line in z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().split()}
        assert z.read("bitsandbytes/libbitsandbytes_cuda130.so") == members["bitsandbytes/libbitsandbytes_cuda130.so"]
    assert kept == listed  # RECORD lists exactly what the wheel holds
    assert {"bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda132.so",
            "bitsandbytes/__init__.py"} <= kept


def test_a_carry_list_line_that_pins_nothing_is_refused_naming_it(tmp_path):
    carry = _carry()
    bad = tmp_path / "list.txt"
    bad.write_text("# image-has: torch\nrich==15.0.0\ntransformers>=5.24\n")
    with pytest.raises(SystemExit, match=r"list.txt:3: 'transformers>=5.24' is not NAME==VERSION"):
        carry.read_list(bad)
