"""Load and validate a conversation-format jsonl file before any training starts.

Every line is checked and every problem is reported at once, each as `FILE:LINE: problem (fix)`: malformed JSON,
missing or mistyped keys, duplicate ids, image paths that are absolute or escape the image root (rejected), missing
or unreadable images, and `<|image_N|>` tags in a user text that do not match the turn's images.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from training_core.model.geometry import check_num_crops, hd_geometry
from training_core.model.image_tags import IMAGE_TAG, parse_image_tags

from .records import DataError, Record, Turn


def default_image_root(jsonl_path: Path) -> Path:
    return jsonl_path.parent / "images"


def load_jsonl(path: str | Path, image_root: str | Path | None = None, *, check_images: bool = True,
               num_crops: int | None = None) -> list[Record]:
    """All records of a jsonl file, or a `DataError` listing every problem with file and line. With `num_crops`,
    each image must also survive the HD transform at that many crops (not too elongated)."""
    path = Path(path)
    if num_crops is not None:  # said once, not once per image
        try:
            check_num_crops(num_crops)
        except ValueError as exc:
            raise DataError([f"--num-crops: {exc}"]) from None
    if path.exists() and not path.is_file():
        raise DataError([f"{path}: the dataset file is {_file_kind(path)}, not a regular file (a conversation-format "
                         ".jsonl)"])
    if not path.is_file():
        raise DataError([f"{path}: no such dataset file (expected a conversation-format .jsonl)"])
    root = Path(image_root) if image_root is not None else default_image_root(path)
    records, problems, seen_ids, checked = [], [], {}, {}
    with path.open("rb") as handle:
        if handle.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise DataError([f"{path}: is UTF-16 text; save it as UTF-8 (one JSON record per line)"])
        handle.seek(0)
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 text (byte {exc.start} of the line); save the file as UTF-8")
                continue
            if not line.strip():
                continue
            record, line_problems = _parse_line(line, where, root)
            if record is not None:
                if record.id in seen_ids:
                    line_problems.append(f"{where}: duplicate id {record.id!r} (first on line {seen_ids[record.id]})")
                seen_ids.setdefault(record.id, lineno)
                if check_images:
                    line_problems += _check_images(record, where, root, checked, num_crops)
            problems += line_problems
            if record is not None and not line_problems:
                records.append(record)
    if problems:
        raise DataError(problems)
    if not records:
        raise DataError([f"{path}: the file holds no records"])
    return records


# One text field (a question, an answer): a real one is under a few KB. 100 MB in one record aborted the tokenizer
# (exit 134) in `data validate --lengths`; the bound is checked as the record is read, before any tokenizer sees it.
MAX_TEXT_CHARS = 1_000_000


def _lone_surrogate(value) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _parse_line(line: str, where: str, root: Path) -> tuple[Record | None, list[str]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, [f"{where}: malformed JSON ({exc.msg} at column {exc.colno})"]
    if not isinstance(obj, dict):
        return None, [f"{where}: a record must be a JSON object, got {type(obj).__name__}"]
    if _lone_surrogate(obj):
        return None, [f"{where}: text holds a lone surrogate (an escape such as \\ud800 without its pair): not valid "
                      "Unicode; fix the text"]
    problems = [f"{where}: missing key {key!r}" for key in ("id", "source", "conversations") if key not in obj]
    if problems:
        return None, problems
    if not isinstance(obj["id"], str) or not obj["id"]:
        problems.append(f"{where}: 'id' must be a non-empty string")
    if not isinstance(obj["source"], str):
        problems.append(f"{where}: 'source' must be a string")
    convs = obj["conversations"]
    if not isinstance(convs, list) or not convs:
        return None, problems + [f"{where}: 'conversations' must be a non-empty list of turns"]
    turns = []
    for k, raw in enumerate(convs):
        turn, turn_problems = _parse_turn(raw, f"{where}: conversations[{k}]")
        problems += turn_problems
        turns.append(turn)
    if problems:
        return None, problems
    return Record(obj["id"], obj["source"], tuple(turns), image_root=root), []


def _parse_turn(raw, where: str) -> tuple[Turn | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"{where}: a turn must be an object with 'images', 'user', 'assistant'"]
    problems = [f"{where}: missing key {key!r}" for key in ("images", "user", "assistant") if key not in raw]
    if problems:
        return None, problems
    images, user, assistant = raw["images"], raw["user"], raw["assistant"]
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        problems.append(f"{where}: 'images' must be a list of relative paths (strings)")
    for key, value in (("user", user), ("assistant", assistant)):
        if not isinstance(value, str):
            problems.append(f"{where}: {key!r} must be a string")
    answers = raw.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        problems.append(f"{where}: 'answers' (optional) must be a list of strings")
    if problems:
        return None, problems
    for key, value in (("user", user), ("assistant", assistant), *((f"answers[{i}]", a) for i, a in enumerate(answers))):
        if len(value) > MAX_TEXT_CHARS:
            problems.append(f"{where}: {key!r} is {len(value):,} characters, over the {MAX_TEXT_CHARS:,} a training "
                            "text can be (the model's context is 131,072 tokens); shorten or drop the record")
    if problems:
        return None, problems
    if IMAGE_TAG.search(user):
        try:
            parse_image_tags(user, len(images))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return Turn(tuple(images), user, assistant, tuple(answers)), problems


def _check_images(record: Record, where: str, root: Path, checked: dict, num_crops: int | None = None) -> list[str]:
    problems = []
    for ref in record.all_images:
        problem = checked.get(ref)
        if ref not in checked:
            problem = checked[ref] = _image_problem(ref, root, num_crops)
        if problem:
            problems.append(f"{where}: image {ref!r}: {problem}")
    return problems


def _file_kind(path: Path) -> str:
    """What a path that exists but is no regular file is, in words."""
    mode = path.stat().st_mode
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "not a regular file"


def _image_problem(ref: str, root: Path, num_crops: int | None = None) -> str | None:
    pure = PurePosixPath(ref)
    if pure.is_absolute() or Path(ref).is_absolute():
        return f"absolute paths are rejected; write it relative to the image root {root}"
    if ".." in pure.parts:
        return f"the path escapes the image root {root} ('..' is rejected)"
    full = (root / ref).resolve()
    if not full.is_relative_to(root.resolve()):
        return f"the path escapes the image root {root} (through a link)"
    if not full.exists():
        return f"missing: no file at {root / ref}"
    if not full.is_file():
        kind = _file_kind(full)
        return f"not a regular file: {root / ref} is {kind}; replace it with the image file itself"
    try:
        with Image.open(full) as image:  # decoded once, whole: a truncated JPEG or a broken PNG stream is said here
            size = image.size
            image.load()
    except Image.DecompressionBombError as exc:
        return (f"too large to decode safely ({exc}); downscale it (the HD transform uses at most 16 crops of "
                "336 pixels)")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"unreadable image file ({type(exc).__name__}: {exc})"
    if num_crops is not None:
        try:
            hd_geometry(*size, num_crops)
        except ValueError as exc:
            return f"{exc} at num_crops {num_crops}; crop or pad it to a less extreme aspect ratio"
    return None
