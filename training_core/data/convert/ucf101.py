"""UCF-101 subset -> conversation-format jsonl, as the recipe's `convert_ucf101.py` (docs/RECIPE.md §1.12).

Input: the extracted `UCF101_subset` directory (`{train,val,test}/{Class}/*.avi`), its parent, or the
`UCF101_subset.tar.gz` archive, of which only the videos are extracted (each at most MAX_VIDEO_BYTES, all together
at most MAX_ARCHIVE_BYTES: a small archive of gigabytes of zeros is refused before it fills the disk). Classes are the
sorted folder names; 8 frames per video at `arange(0, T, T/8)`, decoded with PyAV as RGB and saved as JPEG to
`images/{split}/{Class}/{video}.{k}.jpg`; one record per video with id `{split}-{i:010d}` where `i` counts all
videos in order (train, val, test; sorted by class and file name) and the prompt
`Classify the video into one of the following classes: A, B, ....`; files `ucf101_{split}.jsonl`.

Everything (the extracted videos, the frames, the jsonl files) is written under a hidden folder in --out and moved into
place only when every split converted: a bad video, a full disk, Ctrl-C or SIGTERM leaves nothing half-converted and
nothing that refuses the rerun (the folder is removed on every error and signal).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..records import DataError, Record, Turn, record_to_json, write_jsonl
from .staging import move_into_place, staging

SPLITS = ("train", "val", "test")
NUM_FRAMES = 8
MAX_VIDEO_BYTES = 256 * 2**20  # a UCF-101 clip is a few MB
MAX_ARCHIVE_BYTES = 16 * 2**30  # the whole UCF-101 (13,320 clips) is 6.5 GB


def ucf101_prompt(classes: list[str]) -> str:
    return f"Classify the video into one of the following classes: {', '.join(classes)}."


def frame_indices(total_frames: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """`np.arange(0, T, T / 8).astype(int)`, the recipe's uniform sampling from frame 0."""
    if total_frames <= 0:
        raise ValueError("a video with no frames")
    return np.arange(0, total_frames, total_frames / num_frames).astype(int)


def read_frames(video: Path, num_frames: int = NUM_FRAMES, shown: str | None = None) -> list[Image.Image]:
    """The recipe's frames of one video; `shown`: how errors name it (an archive's member, not its extracted copy)."""
    shown = shown or str(video)
    try:
        import av  # imported on use: only the conversion of real videos decodes them
    except ImportError as exc:
        raise DataError([f"{shown}: decoding UCF-101 videos needs the av package (PyAV): pip install av"]) from exc
    try:
        mode = os.stat(video).st_mode
    except OSError as exc:
        raise DataError([f"{shown}: cannot read the video ({exc.strerror})"]) from None
    if not stat.S_ISREG(mode):  # a named pipe would block the decoder forever
        raise DataError([f"{shown}: not a regular file (a named pipe, device or directory): move it aside"])
    try:
        with av.open(str(video)) as container:
            total = container.streams.video[0].frames
            if total <= 0:  # some containers do not store the frame count: count by decoding
                total = sum(1 for _ in container.decode(video=0))
                container.seek(0)
            wanted = set(frame_indices(total, num_frames).tolist())
            frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted]
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise DataError([f"{shown}: cannot decode the video ({type(exc).__name__}: {exc})"]) from exc
    if len(frames) != len(wanted):
        raise DataError([f"{shown}: decoded {len(frames)} of the {len(wanted)} frames the stream announced"])
    return [Image.fromarray(f) for f in frames]


def _subset_root(src: Path) -> Path:
    for candidate in (src, src / "UCF101_subset"):
        if any((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise DataError([f"{src}: expected UCF101_subset/{{train,val,test}}/<Class>/*.avi under it"])


def convert_ucf101(
    src: str | Path, out_dir: str | Path, *, overwrite: bool = False, progress: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Convert; returns the number of videos per split. Refuses to overwrite an earlier conversion."""
    src, out_dir = Path(src), Path(out_dir)
    outputs = [out_dir / f"ucf101_{s}.jsonl" for s in SPLITS]
    existing = [path for path in outputs if path.exists()]
    if existing and not overwrite:
        raise DataError([f"{existing[0]} exists: choose another --out or pass --overwrite"])
    archive = src.is_file() and src.name.endswith((".tar.gz", ".tgz"))
    if not archive:
        root = _subset_root(src)
    with staging(out_dir, "ucf101") as folder:
        names = {}
        if archive:
            root = _extract_videos(src, folder / "videos", names)
        counts = _convert_tree(root, folder / "out", progress, names)
        for path in outputs:  # --overwrite: the earlier conversion goes only now that this one is complete
            path.unlink(missing_ok=True)
        move_into_place(folder / "out", out_dir, [f"ucf101_{split}.jsonl" for split in counts],
                        [f"images/{split}" for split in SPLITS])
        return counts


def _extract_videos(src: Path, into: Path, names: dict[Path, str]) -> Path:
    """Only the archive's `<...>/<split>/<Class>/<video>.avi` regular files, each and all together bounded, under
    `into`; `names` maps each extracted file to how errors name it (`archive.tar.gz:member`)."""
    total = 0
    try:
        with tarfile.open(src) as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if not (member.isfile() and len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].endswith(".avi")):
                    continue
                if any(part in ("", ".", "..") or "/" in part or "\\" in part for part in parts[-3:]):
                    continue
                where = f"{src}:{member.name}"
                if member.size > MAX_VIDEO_BYTES:
                    raise DataError([f"{where}: {member.size:,} bytes, over the {MAX_VIDEO_BYTES // 2**20} MiB a "
                                     "UCF-101 clip could be; nothing was converted (not the UCF101_subset archive?)"])
                total += member.size
                if total > MAX_ARCHIVE_BYTES:
                    raise DataError([f"{src}: its videos exceed {MAX_ARCHIVE_BYTES // 2**30} GiB, more than the whole "
                                     "UCF-101; nothing was converted (not the UCF101_subset archive?)"])
                target = into.joinpath(*parts[-3:])
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as data, open(target, "wb") as out:
                    shutil.copyfileobj(data, out, 2**20)
                names[target] = where
    except (tarfile.TarError, EOFError, zlib.error) as exc:  # a corrupt or truncated archive
        raise DataError([f"{src}: not extracted: {type(exc).__name__}: {exc}; nothing was converted (use the "
                         "official UCF101_subset archive, or extract it yourself and pass the directory)"]) from None
    if not names:
        raise DataError([f"{src}: holds no <split>/<Class>/*.avi videos (expected UCF101_subset/{{train,val,test}}/"
                         "<Class>/*.avi)"])
    return into


def _convert_tree(root: Path, out_dir: Path, progress, names: dict[Path, str] | None = None) -> dict[str, int]:
    names = names or {}
    splits = [s for s in SPLITS if (root / s).is_dir()]
    classes = sorted({p.name for s in splits for p in (root / s).iterdir() if p.is_dir()})
    prompt = ucf101_prompt(classes)
    counts, index = {}, 0
    for split in splits:
        lines = []
        for video in sorted((root / split).glob("*/*.avi")):
            label = video.parent.name
            paths = []
            for k, frame in enumerate(read_frames(video, shown=names.get(video))):
                rel = f"{split}/{label}/{video.stem}.{k}.jpg"
                (out_dir / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                frame.save(out_dir / "images" / rel)
                paths.append(rel)
            record = Record(f"{split}-{index:010d}", "ucf101", (Turn(tuple(paths), prompt, label),))
            lines.append(record_to_json(record))
            index += 1
            if progress:
                progress(f"{split}: {video.name}")
        write_jsonl(out_dir / f"ucf101_{split}.jsonl", lines)
        counts[split] = len(lines)
    return counts
