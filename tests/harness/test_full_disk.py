"""Issue 31 (4): `run`, `data synth` and `data convert` on a full disk were OSError tracebacks. Here on a
real full disk: a small tmpfs mounted in a private mount namespace (`unshare --mount`, root only; skipped where the
machine does not allow it), so nothing outside the test sees it. Each command is an `error:` line, exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason="needs root and unshare --mount to mount a small tmpfs")


def on_full_disk(tmp_path: Path, size: str, *argv: str, prepare: str = "", after: str = "") -> subprocess.CompletedProcess:
    """`python -m harness ARGV` with `tmp_path/full` a tmpfs of `size` (after the shell line `prepare`; the shell line
    `after` runs while the tmpfs is still there, its output on stdout after the line LEFT:)."""
    full = tmp_path / "full"
    full.mkdir(exist_ok=True)
    script = (f"mount -t tmpfs -o size={size} tmpfs {full} && {prepare or 'true'} && "
              f"{{ {sys.executable} -m harness \"$@\"; rc=$?; echo LEFT:; {after or 'true'}; exit $rc; }}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def _said(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr


def test_data_synth_on_a_full_disk(tmp_path):
    out = on_full_disk(tmp_path, "256k", "data", "synth", "docvqa", "--out", str(tmp_path / "full" / "twin"),
                       "--n-train", "200", "--n-eval", "10")
    assert "No space left on device" in _said(out)


def test_run_on_a_full_disk(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, gpu: cpu, "
                    "global_batch: 2, measured_steps: 1, warmup_steps: 0}\n")
    # no room for the group's own files: refused up front, naming the file
    out = on_full_disk(tmp_path, "16k", "run", str(grid), "--results", str(tmp_path / "full" / "results"),
                       "--no-estimate", prepare=f"head -c 12000 /dev/zero > {tmp_path}/full/filler")
    assert "env.json: cannot be written (No space left on device)" in _said(out)
    # room for them but not for the cell's data: the cell's row says so (exit 1, a failed cell), no traceback
    out = on_full_disk(tmp_path, "40k", "run", str(grid), "--results", str(tmp_path / "full" / "results"),
                       "--no-estimate")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "No space left" in out.stdout


def test_convert_on_a_full_disk(tmp_path):
    """From a directory and from an archive: an error, and nothing half-written left under --out (export on a full
    disk: tests/core/test_export_tampered.py)."""
    import tarfile

    from tests.data.test_ucf101_convert import encode_video

    video = tmp_path / "src" / "train" / "A" / "v_A_g01_c01.avi"
    encode_video(video, size=96)
    out = on_full_disk(tmp_path, "8k", "data", "convert", "ucf101", "--src", str(tmp_path / "src"),
                       "--out", str(tmp_path / "full" / "ucf"))
    assert "No space left on device" in _said(out) and "nothing was kept" in out.stderr
    archive = tmp_path / "UCF101_subset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "train", arcname="UCF101_subset/train")
    out = on_full_disk(tmp_path, "8k", "data", "convert", "ucf101", "--src", str(archive),
                       "--out", str(tmp_path / "full" / "ucf"))
    assert "No space left on device" in _said(out)


def test_report_compare_and_baseline_leave_no_temporaries_on_a_full_disk(tmp_path):
    """Issue 31 (2): on a full disk `report`, `compare` and `baseline` left 0-byte `.NAME.PID.tmp` files; a baseline
    could be left as rows.jsonl without env.json (which then refused the retry)."""
    from tests.harness.test_reliability3 import _group

    group = _group(tmp_path / "g")
    full = tmp_path / "full"
    for argv in (["report", str(group), "--no-plots", "--out", str(full / "report.md")],
                 ["compare", str(group), str(group), "--out", str(full / "compare.md")],
                 ["baseline", str(group), "--root", str(full / "baselines")]):
        out = on_full_disk(tmp_path, "4k", *argv, prepare=f"head -c 4096 /dev/zero > {full}/filler 2>/dev/null; true",
                           after=f"find {full} -mindepth 1 ! -name filler")
        assert out.returncode == 2 and "Traceback" not in out.stderr, (argv, out.stderr[-2000:])
        assert "No space left on device" in out.stderr, (argv, out.stderr)
        left = out.stdout.split("LEFT:\n", 1)[1].split()
        assert not [name for name in left if name.endswith(".tmp") or name.endswith("rows.jsonl")], (argv, left)
