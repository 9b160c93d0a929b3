"""Reliability, round 3 (issue 31), datasets: images are decoded once when a dataset is validated (a truncated JPEG,
a PNG with a broken stream, a huge header without data are named there, not mid-run), the loader's error names the
record and the file, a bad --num-crops is said once, and a pipe or a file where a dataset belongs is called what it
is."""

from __future__ import annotations

import os
import zlib

import pytest
from PIL import Image

from training_core.data.jsonl import load_jsonl
from training_core.data.records import DataError
from training_core.data.sources import load_records
from training_core.data.synth import synthesize
from training_core.tasks import get_task


def _twin(tmp_path):
    synthesize("docvqa", tmp_path / "twin", n_train=2, n_eval=1, seed=0)
    jsonl = next((tmp_path / "twin").glob("*train*.jsonl"))
    images = sorted((tmp_path / "twin" / "images" / "train").iterdir())
    return jsonl, images


def _broken_png(path):
    """A PNG whose header is fine and whose compressed stream is not (CRCs intact, so only a decode finds it)."""
    data = path.read_bytes()
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    body = bytearray(data[start + 8:start + 8 + length])
    body[len(body) // 2:] = b"\x00" * (len(body) - len(body) // 2)
    chunk = b"IDAT" + bytes(body)
    path.write_bytes(data[:start + 8] + bytes(body) + zlib.crc32(chunk).to_bytes(4, "big")
                     + data[start + 12 + length:])


@pytest.mark.parametrize("damage", ["truncated-jpeg", "broken-png-stream", "header-without-data"])
def test_an_image_that_does_not_decode_is_named_when_the_dataset_is_read(tmp_path, damage):
    jsonl, images = _twin(tmp_path)
    target = images[0]
    if damage == "truncated-jpeg":
        with Image.open(target) as image:
            image.convert("RGB").save(target.with_suffix(".tmp"), format="JPEG")
        data = target.with_suffix(".tmp").read_bytes()
        target.write_bytes(data[: len(data) // 2])
        target.with_suffix(".tmp").unlink()
    elif damage == "broken-png-stream":
        _broken_png(target)
    else:
        data = target.read_bytes()
        target.write_bytes(data[:data.index(b"IDAT") - 4].replace(b"IHDR", b"IHDR", 1))
    with pytest.raises(DataError) as raised:
        load_jsonl(jsonl)
    said = str(raised.value)
    assert f"{jsonl}:" in said and f"image 'train/{target.name}': unreadable image file" in said


def test_the_loaders_error_names_the_record_and_the_file(tmp_path):
    jsonl, images = _twin(tmp_path)
    records = load_jsonl(jsonl)
    _broken_png(images[0])
    record = next(r for r in records if any(str(ref).endswith(images[0].name) for ref in r.all_images))
    ref = next(ref for ref in record.all_images if str(ref).endswith(images[0].name))
    with pytest.raises(DataError, match=f"record {record.id}: image .*{images[0].name} does not decode"):
        record.open_image(ref)


def test_a_bad_num_crops_is_said_once_not_once_per_image(tmp_path):
    jsonl, _ = _twin(tmp_path)
    with pytest.raises(DataError) as raised:
        load_jsonl(jsonl, num_crops=1000)
    assert str(raised.value).count("num_crops=1000 is out of range") == 1
    assert str(raised.value).startswith("--num-crops: num_crops=1000 is out of range")


def test_a_pipe_or_a_file_where_a_dataset_belongs_is_called_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "train.jsonl")
    with pytest.raises(DataError, match="the dataset file is a named pipe"):
        load_jsonl(tmp_path / "train.jsonl")
    (tmp_path / "hostname").write_text("vm\n")
    with pytest.raises(DataError, match="is a file, not a data directory"):
        load_records(get_task("hateful_memes"), "train", tmp_path / "hostname")


def _cauldron(path, bad_row: dict | None):
    """A Cauldron-layout save_to_disk dataset of 4 one-image rows; row 2 replaced by `bad_row` when given."""
    import io

    import datasets

    from tests.conftest import gradient_image

    def png(i):
        buffer = io.BytesIO()
        gradient_image(40, 30, seed=i).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    rows = [{"images": [png(i)], "texts": [{"user": f"meme {i}", "assistant": "no"}]} for i in range(4)]
    if bad_row is not None:
        rows[2] = bad_row
    features = datasets.Features({"images": datasets.List(datasets.Image()),
                                  "texts": datasets.List({"user": datasets.Value("string"),
                                                          "assistant": datasets.Value("string")})})
    data = {key: [row[key] for row in rows] for key in ("images", "texts")}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(str(path))
    return path


def _bomb_png() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (PIL's decompression-bomb bound refuses it)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("bad", ["no_assistant", "not_an_image", "bomb_header"])
def test_convert_hateful_memes_names_a_bad_row_and_keeps_nothing(tmp_path, capsys, monkeypatch, bad):
    """Issue 31 (4): a row without `assistant`, bytes that are no image and a 100000x100000 PNG header were a KeyError,
    an UnidentifiedImageError and a DecompressionBombError traceback, after the train split had been written."""
    from dataclasses import replace

    from harness.cli import main
    from training_core.data.convert import hf as convert_module
    from training_core.tasks import get_task
    from training_core.tasks.spec import HFSource

    task = replace(get_task("hateful_memes"), hf_sources={  # the recipe's 500-row cut, at 2 for 4 rows
        "train": HFSource("x", "hateful_memes", "train[2:]", "cauldron"),
        "eval": HFSource("x", "hateful_memes", "train[:2]", "cauldron")})
    monkeypatch.setattr(convert_module, "get_task", lambda name: task)
    row = {"no_assistant": {"images": [{"bytes": _png_bytes(), "path": None}],
                            "texts": [{"user": "meme", "assistant": None}]},
           "not_an_image": {"images": [{"bytes": b"GIF? no, text", "path": None}],
                            "texts": [{"user": "meme", "assistant": "no"}]},
           "bomb_header": {"images": [{"bytes": _bomb_png(), "path": None}],
                           "texts": [{"user": "meme", "assistant": "no"}]}}[bad]
    data = _cauldron(tmp_path / "hf", row)
    out = tmp_path / "out"
    assert main(["data", "convert", "hateful_memes", "--data-dir", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    said = {"no_assistant": "row 0: texts[0] lacks a 'user' and an 'assistant' string",
            "not_an_image": "row 0: cannot be read (UnidentifiedImageError",
            "bomb_header": "row 0: cannot be read (DecompressionBombError"}[bad]
    assert said in err and "Traceback" not in err, err
    assert list(out.iterdir()) == []  # the eval split converted first is not left behind


def _png_bytes() -> bytes:
    import io

    from tests.conftest import gradient_image

    buffer = io.BytesIO()
    gradient_image(40, 30, seed=9).save(buffer, format="PNG")
    return buffer.getvalue()


def test_convert_refuses_a_directory_that_is_already_conversation_jsonl(tmp_path, capsys):
    """Issue 31 (4): `--data-dir` of a synthetic twin was a TypeError ('str' object is not callable)."""
    from harness.cli import main

    assert main(["data", "synth", "hateful_memes", "--out", str(tmp_path / "twin"), "--n-train", "2",
                 "--n-eval", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "convert", "hateful_memes", "--data-dir", str(tmp_path / "twin"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "already conversation-format jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_text_field_past_the_length_bound_is_named_before_any_tokenizer_sees_it(tmp_path, capsys):
    """Issue 31 (3): one record with 100 MB of text aborted `data validate --lengths` in the tokenizer (exit 134)."""
    import json

    from harness.cli import main
    from training_core.data.jsonl import MAX_TEXT_CHARS

    data = tmp_path / "data"
    assert main(["data", "synth", "docvqa", "--out", str(data), "--n-train", "2", "--n-eval", "1"]) == 0
    capsys.readouterr()
    train = data / "train.jsonl"
    lines = train.read_text().splitlines()
    record = json.loads(lines[1])
    record["conversations"][0]["user"] += "x" * (MAX_TEXT_CHARS + 1)
    train.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    assert main(["data", "validate", "docvqa", str(data), "--split", "train", "--lengths"]) == 2
    err = capsys.readouterr().err
    assert f"{train}:2: conversations[0]: 'user' is" in err and f"over the {MAX_TEXT_CHARS:,}" in err
