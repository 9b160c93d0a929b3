"""UCF-101 subset -> conversation-format jsonl, as the recipe's `convert_ucf101.py` (docs/RECIPE.md §1.12).

Input: the extracted `UCF101_subset` directory (`{train,val,test}/{Class}/*.avi`), its parent, or the
`UCF101_subset.tar.gz` archive (extracted to a temporary directory that is removed afterwards). Classes are the
sorted folder names; 8 frames per video at `arange(0, T, T/8)`, decoded with PyAV as RGB and saved as JPEG to
`images/{split}/{Class}/{video}.{k}.jpg`; one record per video with id `{split}-{i:010d}` where `i` counts all
videos in order (train, val, test; sorted by class and file name) and the prompt
`Classify the video into one of the following classes: A, B, ....`; files `ucf101_{split}.jsonl`.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..records import DataError, Record, Turn, record_to_json, write_jsonl

SPLITS = ("train", "val", "test")
NUM_FRAMES = 8


def ucf101_prompt(classes: list[str]) -> str:
    return f"Classify the video into one of the following classes: {', '.join(classes)}."


def frame_indices(total_frames: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """`np.arange(0, T, T / 8).astype(int)`, the recipe's uniform sampling from frame 0."""
    if total_frames <= 0:
        raise ValueError("a video with no frames")
    return np.arange(0, total_frames, total_frames / num_frames).astype(int)


def read_frames(video: Path, num_frames: int = NUM_FRAMES) -> list[Image.Image]:
    try:
        import av  # imported on use: only the conversion of real videos decodes them
    except ImportError as exc:
        raise DataError([f"{video}: decoding UCF-101 videos needs the av package (PyAV): pip install av"]) from exc
    try:
        with av.open(str(video)) as container:
            total = container.streams.video[0].frames
            if total <= 0:  # some containers do not store the frame count: count by decoding
                total = sum(1 for _ in container.decode(video=0))
                container.seek(0)
            wanted = set(frame_indices(total, num_frames).tolist())
            frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted]
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise DataError([f"{video}: cannot decode the video ({type(exc).__name__}: {exc})"]) from exc
    if len(frames) != len(wanted):
        raise DataError([f"{video}: decoded {len(frames)} of the {len(wanted)} frames the stream announced"])
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
    existing = [out_dir / f"ucf101_{s}.jsonl" for s in SPLITS if (out_dir / f"ucf101_{s}.jsonl").exists()]
    if existing and not overwrite:
        raise DataError([f"{existing[0]} exists: choose another --out or pass --overwrite"])
    if src.is_file() and src.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory(prefix="ucf101-") as tmp:
            try:
                with tarfile.open(src) as archive:
                    archive.extractall(tmp, filter="data")  # refuses members that leave tmp, links out, devices
            except tarfile.TarError as exc:  # a traversal member, a corrupt or truncated archive
                raise DataError([f"{src}: not extracted: {type(exc).__name__}: {exc}; nothing was converted (use "
                                 "the official UCF101_subset archive, or extract it yourself and pass the directory)"])
            except OSError as exc:
                raise DataError([f"{src}: not extracted: {exc}"]) from None
            return _convert_tree(_subset_root(Path(tmp)), out_dir, progress)
    return _convert_tree(_subset_root(src), out_dir, progress)


def _convert_tree(root: Path, out_dir: Path, progress) -> dict[str, int]:
    splits = [s for s in SPLITS if (root / s).is_dir()]
    classes = sorted({p.name for s in splits for p in (root / s).iterdir() if p.is_dir()})
    prompt = ucf101_prompt(classes)
    counts, index = {}, 0
    for split in splits:
        lines = []
        for video in sorted((root / split).glob("*/*.avi")):
            label = video.parent.name
            paths = []
            for k, frame in enumerate(read_frames(video)):
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
