import json
import shutil
import tarfile

import av
import numpy as np
import pytest
from PIL import Image

from training_core.data.convert.ucf101 import convert_ucf101, frame_indices
from training_core.data.records import DataError

CLASSES = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
           "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress"]
# The guide's example line (FineTuning_Vision, "converted layout"), verbatim.
GUIDE_EXAMPLE = (
    '{"id": "val-0000000300", "source": "ucf101", "conversations": [{"images": ['
    + ", ".join(f'"val/BabyCrawling/v_BabyCrawling_g21_c04.{k}.jpg"' for k in range(8))
    + '], "user": "Classify the video into one of the following classes: ApplyEyeMakeup, ApplyLipstick, Archery, '
    'BabyCrawling, BalanceBeam, BandMarching, BaseballPitch, Basketball, BasketballDunk, BenchPress.", '
    '"assistant": "BabyCrawling"}]}'
)
FRAMES = 12  # frame k is filled with grey level 20 * k


def encode_video(path, n_frames=FRAMES, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for k in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * k, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A UCF101_subset tree like the recipe's: 30 train videos per class (300), one val video."""
    root = tmp_path_factory.mktemp("src") / "UCF101_subset"
    for cls in CLASSES:
        for g in range(30):
            encode_video(root / "train" / cls / f"v_{cls}_g{g + 1:02d}_c01.avi")
    encode_video(root / "val" / "BabyCrawling" / "v_BabyCrawling_g21_c04.avi")
    return root


def test_frame_indices_are_the_recipes():
    assert frame_indices(12).tolist() == [0, 1, 3, 4, 6, 7, 9, 10]
    assert frame_indices(8).tolist() == list(range(8))
    assert frame_indices(100).tolist() == [0, 12, 25, 37, 50, 62, 75, 87]


def test_conversion_matches_the_guides_example(subset, tmp_path):
    counts = convert_ucf101(subset, tmp_path / "out")
    assert counts == {"train": 300, "val": 1}
    out = tmp_path / "out"
    assert (out / "ucf101_val.jsonl").read_text() == GUIDE_EXAMPLE + "\n"
    train = [json.loads(line) for line in (out / "ucf101_train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in train[:2]] == ["train-0000000000", "train-0000000001"]
    assert train[0]["conversations"][0]["images"][0] == "train/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.0.jpg"
    assert len(list((out / "images" / "train" / "Archery").glob("*.jpg"))) == 240  # 30 videos x 8 frames
    # the saved frames are the recipe's frames 0, 1, 3, 4, 6, 7, 9, 10 (grey level 20 * index)
    for k, index in enumerate(frame_indices(FRAMES)):
        frame = np.asarray(Image.open(out / "images" / "val" / "BabyCrawling" / f"v_BabyCrawling_g21_c04.{k}.jpg"))
        assert abs(frame.mean() - 20 * index) < 6, (k, index, frame.mean())


def test_tarball_input_and_no_silent_overwrite(subset, tmp_path):
    archive = tmp_path / "UCF101_subset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(subset / "val", arcname="UCF101_subset/val")
    counts = convert_ucf101(archive, tmp_path / "out")
    assert counts == {"val": 1}
    assert json.loads((tmp_path / "out" / "ucf101_val.jsonl").read_text())["id"] == "val-0000000000"
    with pytest.raises(DataError, match="exists: choose another --out or pass --overwrite"):
        convert_ucf101(archive, tmp_path / "out")
    assert convert_ucf101(archive, tmp_path / "out", overwrite=True) == {"val": 1}


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="expected UCF101_subset"):
        convert_ucf101(tmp_path, tmp_path / "out")
    bad = tmp_path / "UCF101_subset" / "val" / "Archery" / "v_bad.avi"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match="v_bad.avi: cannot decode"):
        convert_ucf101(tmp_path, tmp_path / "out")


def test_an_archive_with_a_traversal_member_is_an_error_line(tmp_path, capsys):
    import io
    import tarfile

    from harness.cli import main

    archive = tmp_path / "UCF101_subset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("UCF101_subset/../../evil.txt")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))
    assert main(["data", "convert", "ucf101", "--src", str(archive), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    # only <split>/<Class>/*.avi members are ever extracted (by their last three parts, under --out's staging
    # folder): the traversal member is not read at all
    assert f"{archive}: holds no <split>/<Class>/*.avi videos" in err
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "ucf101_train.jsonl").exists()
    assert list((tmp_path / "out").iterdir()) == []


def _archive(path, members):
    """A .tar.gz of (name, bytes or a file path) members."""
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, content in members:
            if isinstance(content, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.add(content, arcname=name)
    return path


def test_a_bad_test_video_leaves_nothing_half_converted_and_is_named_by_its_member(subset, tmp_path, capsys):
    """Issue 31 (2, 6): a broken test video left the train split written (and the rerun refused), and a broken video
    from an archive was named by its deleted temporary path. Now nothing is moved into --out until every split
    converted, and the error names `archive:member`."""
    from harness.cli import main

    good = next((subset / "train" / "Archery").glob("*.avi"))
    archive = _archive(tmp_path / "UCF101_subset.tar.gz", [
        ("UCF101_subset/train/Archery/v_Archery_g01_c01.avi", good),
        ("UCF101_subset/test/Archery/v_Archery_g09_c01.avi", b"not a video at all"),
    ])
    out = tmp_path / "out"
    assert main(["data", "convert", "ucf101", "--src", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{archive}:UCF101_subset/test/Archery/v_Archery_g09_c01.avi: cannot decode the video" in err, err
    assert list(out.iterdir()) == []  # no train split, no staging folder left: the rerun is not refused
    tree = tmp_path / "tree"
    shutil.copytree(subset / "train" / "Archery", tree / "train" / "Archery")
    (tree / "test" / "Archery").mkdir(parents=True)
    (tree / "test" / "Archery" / "v_bad.avi").write_bytes(b"junk")
    assert main(["data", "convert", "ucf101", "--src", str(tree), "--out", str(out)]) == 2
    assert f"{tree / 'test' / 'Archery' / 'v_bad.avi'}: cannot decode" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    shutil.rmtree(tree / "test")
    assert main(["data", "convert", "ucf101", "--src", str(tree), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["images", "ucf101_train.jsonl"]


def test_an_archive_bomb_and_a_named_pipe_video_are_refused_without_filling_or_hanging(subset, tmp_path, capsys,
                                                                                      monkeypatch):
    """Issue 31 (3): a 3 MB archive of 3 GiB of zeros was extracted whole into the system temp directory (2.6 GB
    after 15 s) and left there on SIGTERM; an `.avi` that is a named pipe hung the decoder."""
    import os
    import time

    from harness.cli import main
    from training_core.data.convert import ucf101

    monkeypatch.setattr(ucf101, "MAX_VIDEO_BYTES", 2**20)  # the bound, small for the test (256 MiB in use)
    archive = _archive(tmp_path / "bomb.tar.gz", [("UCF101_subset/train/A/v_zeros.avi", bytes(3 * 2**20))])
    before = set(os.listdir(tempfile_dir()))
    assert main(["data", "convert", "ucf101", "--src", str(archive), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{archive}:UCF101_subset/train/A/v_zeros.avi: 3,145,728 bytes, over the 1 MiB" in err
    assert list((tmp_path / "out").iterdir()) == [] and set(os.listdir(tempfile_dir())) == before

    tree = tmp_path / "tree"
    (tree / "train" / "A").mkdir(parents=True)
    os.mkfifo(tree / "train" / "A" / "v_pipe.avi")
    started = time.monotonic()
    assert main(["data", "convert", "ucf101", "--src", str(tree), "--out", str(tmp_path / "out")]) == 2
    assert "v_pipe.avi: not a regular file" in capsys.readouterr().err and time.monotonic() - started < 30


def test_sigterm_during_a_conversion_removes_what_it_wrote(subset, tmp_path):
    """Issue 31 (3): SIGTERM left the extracted archive behind. The staging folder under --out is removed on
    SIGTERM as on Ctrl-C, and nothing else was written."""
    import signal
    import subprocess
    import sys
    import time

    archive = _archive(tmp_path / "UCF101_subset.tar.gz",
                       [(f"UCF101_subset/train/{p.parent.name}/{p.name}", p) for p in sorted(subset.rglob("*.avi"))])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "data", "convert", "ucf101", "--src", str(archive),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob(".ucf101-partial-*/out/images")) and time.monotonic() < deadline:
        time.sleep(0.05)  # until it is converting (extraction done, frames being written)
    assert list(out.glob(".ucf101-partial-*")), "the conversion never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert "stopped by SIGTERM; nothing of the conversion was kept" in err
    assert list(out.iterdir()) == []


def tempfile_dir():
    import tempfile

    return tempfile.gettempdir()
