import json
import os

import pytest
from PIL import Image

from training_core.data.jsonl import load_jsonl
from training_core.data.records import DataError


def _record(rid="r1", images=("a.png",), user="What is it?", assistant="a cat", **extra):
    return {"id": rid, "source": "test", "conversations": [{"images": list(images), "user": user, "assistant": assistant, **extra}]}


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (20, 10), (1, 2, 3)).save(tmp_path / "images" / "b.jpg")

    def write(*lines):
        path = tmp_path / "train.jsonl"
        path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
        return path

    return tmp_path, write


def test_a_good_file_loads(dataset):
    root, write = dataset
    path = write(_record("r1"), "", _record("r2", images=("a.png", "b.jpg"), user="<|image_1|> vs <|image_2|>?"))
    records = load_jsonl(path)
    assert [r.id for r in records] == ["r1", "r2"]
    assert records[1].conversations[0].images == ("a.png", "b.jpg")
    assert records[0].open_image("a.png").size == (20, 10)
    assert records[0].conversations[0].gold == ("a cat",)


def _problems(path):
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    return info.value.problems


def test_malformed_json_names_file_and_line(dataset):
    root, write = dataset
    path = write(_record("r1"), '{"id": "r2", "source": ')
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:2: malformed JSON")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"source": "s", "conversations": []}, "missing key 'id'"),
        ({"id": "x", "source": "s", "conversations": []}, "'conversations' must be a non-empty list"),
        ({"id": "x", "source": "s", "conversations": [{"user": "q", "assistant": "a"}]}, "conversations[0]: missing key 'images'"),
        ({"id": "x", "source": "s", "conversations": [{"images": "a.png", "user": "q", "assistant": "a"}]},
         "'images' must be a list"),
        (_record(assistant=3), "'assistant' must be a string"),
        (_record(answers="a"), "'answers' (optional) must be a list of strings"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_missing_or_mistyped_keys(dataset, bad, message):
    root, write = dataset
    path = write(_record("ok"), bad)
    problems = _problems(path)
    assert any(p.startswith(f"{path}:2:") and message in p for p in problems), problems


def test_missing_and_unreadable_images(dataset):
    root, write = dataset
    (root / "images" / "broken.png").write_bytes(b"not an image at all")
    path = write(_record("r1", images=("nope.png",)), _record("r2", images=("broken.png",)))
    problems = _problems(path)
    assert any(p.startswith(f"{path}:1:") and "missing: no file" in p for p in problems)
    assert any(p.startswith(f"{path}:2:") and "unreadable image" in p for p in problems)


def test_a_fifo_or_directory_named_as_an_image_is_said_to_be_one_not_missing(dataset):
    root, write = dataset
    os.mkfifo(root / "images" / "pipe.png")
    (root / "images" / "folder.png").mkdir()
    problems = _problems(write(_record("r1", images=("pipe.png",)), _record("r2", images=("folder.png",))))
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{root / 'train.jsonl'}:1:") and "a named pipe (FIFO)" in problems[0], problems
    assert problems[1].startswith(f"{root / 'train.jsonl'}:2:") and "a directory" in problems[1], problems
    assert not any("missing" in p for p in problems), problems


@pytest.mark.parametrize("escape", ["../secret.png", "sub/../../secret.png", "/etc/passwd"])
def test_paths_escaping_the_image_root_are_rejected(dataset, escape):
    root, write = dataset
    Image.new("RGB", (4, 4)).save(root / "secret.png")
    path = write(_record("r1", images=(escape,)))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:1:") and ("escapes the image root" in problem or "absolute paths" in problem)


def test_a_symlink_out_of_the_root_is_rejected(dataset):
    root, write = dataset
    Image.new("RGB", (4, 4)).save(root / "outside.png")
    os.symlink(root / "outside.png", root / "images" / "link.png")
    (problem,) = _problems(write(_record("r1", images=("link.png",))))
    assert "escapes the image root" in problem


def test_more_tags_than_images(dataset):
    root, write = dataset
    path = write(_record("r1", images=("a.png",), user="<|image_1|> and <|image_2|>"))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:1: conversations[0]:") and "2 image tag(s) but 1 image(s)" in problem


def test_duplicate_ids_and_all_problems_reported_at_once(dataset):
    root, write = dataset
    path = write(_record("r1"), _record("r1"), "garbage", _record("r3", images=("missing.png",)))
    problems = _problems(path)
    assert len(problems) == 3
    assert "duplicate id 'r1' (first on line 1)" in problems[0]
    assert problems[1].startswith(f"{path}:3:") and problems[2].startswith(f"{path}:4:")


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such dataset file"):
        load_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_huge_and_extreme_images_are_problems_with_file_and_line(dataset, capsys):
    from harness.cli import main

    root, write = dataset
    Image.new("1", (20000, 20000)).save(root / "images" / "huge.png")  # 400 Mpixels: PIL's decompression-bomb limit
    Image.new("RGB", (20000, 1), (9, 9, 9)).save(root / "images" / "thin.png")
    path = write(_record("r1"), _record("r2", images=("huge.png",)), _record("r3", images=("thin.png",)))
    problems = _problems(path)  # without num_crops: the size is checked, the aspect ratio is not
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: image 'huge.png': too large to decode safely")
    with pytest.raises(DataError) as info:
        load_jsonl(path, num_crops=16)
    assert [p.split(": image")[0] for p in info.value.problems] == [f"{path}:2", f"{path}:3"]
    assert "a 20000x1 image is too elongated" in info.value.problems[1] and "num_crops 16" in info.value.problems[1]
    # the CLI lists every problem as an error line (exit 2), no traceback
    assert main(["data", "validate", "docvqa", str(path), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: image 'huge.png': too large" in err and f"{path}:3: image 'thin.png'" in err


def test_encodings_and_lone_surrogates_are_named_by_file_and_line(dataset):
    """Issue 24 (13): invalid UTF-8 on a line, a UTF-16 file, a lone \\ud800 in an answer (it passed and then crashed
    the tokenizer): each a DataError with file and line, the other lines still checked."""
    root, write = dataset
    path = write(_record("r1"), '{"id": "r2", "source": "test", "conversations": [{"images": ["a.png"], '
                                '"user": "q", "assistant": "\\ud800"}]}')
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:2: text holds a lone surrogate")
    good = json.dumps(_record("r1")).encode()
    path.write_bytes(good + b"\n" + b'{"id": "r\xff"}\n')
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:2: not UTF-8 text")
    path.write_text(json.dumps(_record("r1")) + "\n", encoding="utf-16")
    (problem,) = _problems(path)
    assert problem == f"{path}: is UTF-16 text; save it as UTF-8 (one JSON record per line)"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n")  # a UTF-8 BOM is fine
    assert [r.id for r in load_jsonl(path)] == ["r1"]
