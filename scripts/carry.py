#!/usr/bin/env python3
"""`make carry`: a folder of wheels for the stock GPU image (install/carry-stock-gpu.txt says what it has and lacks),
small enough to travel with a checkout to a machine that reaches no index (a device call carries at most 64 MiB).

    python scripts/carry.py [--out build/carry] [--python 3.12] [--cuda-major 13] [--limit-mib 64]

Downloads the list's exact versions as wheels for that Python on Linux x86-64 (no dependencies resolved: the list
is closed over them, tests/test_install.py checks it), builds deepspeed (an sdist) into a wheel, and slims one wheel,
saying so: bitsandbytes ships kernels for CUDA 11.8-13.2, ROCm and XPU (43 MB); only CUDA `--cuda-major`'s and the CPU
library are kept (its loader picks the runtime's version or the nearest of the same major). Writes SIZES.txt and
SLIMMED.txt beside the wheels; refuses a folder over the limit, naming the largest wheels. The folder is built
beside `--out` and renamed into place only when complete."""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "install" / "carry-stock-gpu.txt"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64", "any")
BUILT = ("deepspeed",)  # sdists: built into a wheel here
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path = LIST) -> tuple[dict[str, str], set[str]]:
    """The pins (canonical name -> version) and the `# image-has:` names of the carry list."""
    pins, has = {}, set()
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("# image-has:"):
            has |= {canonical(n) for n in line.split(":", 1)[1].split()}
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if not match:
            raise SystemExit(f"{path}:{number}: {line!r} is not NAME==VERSION (the carry list pins every wheel)")
        pins[canonical(match.group(1))] = match.group(2)
    return pins, has


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_wheel(src: Path, dst: Path, keep) -> list[tuple[str, int]]:
    """Copy wheel `src` to `dst` without the members `keep(name)` refuses, RECORD rewritten to match (pip installs
    what RECORD lists). Returns the dropped members with their compressed sizes."""
    dropped = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename == record:
                continue
            if not keep(info.filename):
                dropped.append((info.filename, info.compress_size))
                continue
            zout.writestr(info, zin.read(info.filename))
        gone = {name for name, _ in dropped}
        lines = [line for line in zin.read(record).decode().splitlines() if line.split(",", 1)[0] not in gone]
        zout.writestr(record, "\n".join(lines) + "\n")
    return dropped


def bnb_keep(cuda_major: int):
    """bitsandbytes' members to keep: everything but the native libraries of other CUDA majors, ROCm and XPU."""
    own = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda_major}\d)\.so$")

    def keep(name: str) -> bool:
        return not re.search(r"libbitsandbytes_\w+\.so$", name) or bool(own.search(name))
    return keep


def build(out: Path, python: str, cuda_major: int, limit_mib: float) -> int:
    pins, _ = read_list()
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-partial-", dir=out.parent))
    try:
        download = [f"{n}=={v}" for n, v in pins.items() if n not in BUILT]
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", python, *platforms, "--dest", str(work), *download], check=True)
        for name in BUILT:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work),
                            f"{name}=={pins[name]}"], check=True)
        slimmed = []
        for wheel in sorted(work.glob("bitsandbytes-*.whl")):
            slim = work / (wheel.name + ".slim")
            dropped = slim_wheel(wheel, slim, bnb_keep(cuda_major))
            before = wheel.stat().st_size
            slim.replace(wheel)
            slimmed.append(f"{wheel.name}: {before / 1e6:.1f} MB -> {wheel.stat().st_size / 1e6:.1f} MB; kept the CPU "
                           f"and CUDA {cuda_major}.x kernels; dropped {len(dropped)} libraries: "
                           + ", ".join(Path(n).name for n, _ in dropped))
        wheels = sorted(work.glob("*.whl"), key=lambda p: -p.stat().st_size)
        found = {canonical(w.name.split("-")[0]) for w in wheels}
        missing = sorted(set(pins) - found)
        if missing:
            raise SystemExit(f"carry: no wheel came for {', '.join(missing)}")
        total = sum(w.stat().st_size for w in wheels)
        sizes = [f"{w.stat().st_size / 1e6:8.2f} MB  {w.name}" for w in wheels]
        sizes.append(f"{total / 1e6:8.2f} MB  total ({total / 2**20:.1f} MiB; limit {limit_mib:g} MiB), "
                     f"{len(wheels)} wheels for Python {python}, Linux x86-64")
        (work / "SIZES.txt").write_text("\n".join(sizes) + "\n")
        (work / "SLIMMED.txt").write_text("\n".join(slimmed or ["nothing was slimmed"]) + "\n")
        if total > limit_mib * 2**20:
            raise SystemExit(f"carry: {total / 2**20:.1f} MiB is over the {limit_mib:g} MiB limit; the largest: "
                             + "; ".join(s.strip() for s in sizes[:3]))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    print("\n".join(sizes))
    print("\n".join(slimmed))
    print(f"carry: {out} (install there with: pip install --no-index --find-links {out} -r "
          f"{LIST.relative_to(ROOT)})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "carry")
    parser.add_argument("--python", default="3.12", help="the image's Python version (default 3.12)")
    parser.add_argument("--cuda-major", type=int, default=13, help="the image's torch CUDA major version (default 13)")
    parser.add_argument("--limit-mib", type=float, default=64.0, help="refuse a folder larger than this (default 64)")
    args = parser.parse_args(argv)
    return build(args.out, args.python, args.cuda_major, args.limit_mib)


if __name__ == "__main__":
    sys.exit(main())
