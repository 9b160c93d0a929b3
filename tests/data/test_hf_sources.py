import json

import datasets
import pytest

from tests.conftest import gradient_image
from training_core.data.convert import convert_hf
from training_core.data.hf import parse_split
from training_core.data.records import DataError
from training_core.data.sources import load_records
from training_core.tasks import get_task


@pytest.fixture(scope="module")
def docvqa_dir(tmp_path_factory):
    """A local copy in the nielsr/docvqa_1200_examples layout (save_to_disk), 4 train / 2 test rows."""
    def rows(n, offset):
        return {
            "id": [f"q{offset + i}" for i in range(n)],
            "image": [gradient_image(120, 160, seed=offset + i) for i in range(n)],
            "query": [{"en": f"What is field {offset + i}?", "de": "?"} for i in range(n)],
            "answers": [[f"value {offset + i}", f"Value {offset + i}"] for i in range(n)],
        }
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "query": {"en": datasets.Value("string"), "de": datasets.Value("string")},
        "answers": datasets.List(datasets.Value("string")),
    })
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(rows(4, 0), features=features),
        "test": datasets.Dataset.from_dict(rows(2, 100), features=features),
    })
    path = tmp_path_factory.mktemp("docvqa") / "hf"
    dd.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def cauldron_dir(tmp_path_factory):
    """A local copy in the Cauldron layout (nlvr2: two images, multi-turn texts), 8 rows in split 'train'."""
    n = 8
    data = {
        "images": [[gradient_image(60, 40, seed=i), gradient_image(60, 40, seed=50 + i)] for i in range(n)],
        "texts": [[{"user": f"statement {i}", "assistant": "True", "source": "nlvr2"},
                   {"user": f"follow-up {i}", "assistant": "False", "source": "nlvr2"}] for i in range(n)],
    }
    features = datasets.Features({
        "images": datasets.List(datasets.Image()),
        "texts": datasets.List({"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                                "source": datasets.Value("string")}),
    })
    path = tmp_path_factory.mktemp("cauldron") / "nlvr2"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(str(path))
    return path


def test_parse_split():
    assert parse_split("train") == ("train", slice(None, None))
    assert parse_split("train[500:]") == ("train", slice(500, None))
    assert parse_split("train[:500]") == ("train", slice(None, 500))
    with pytest.raises(DataError, match="expected NAME"):
        parse_split("train[5]")


def test_docvqa_mini_layout_from_a_local_directory(docvqa_dir):
    task = get_task("docvqa")
    train = load_records(task, "train", docvqa_dir)
    test = load_records(task, "eval", docvqa_dir)
    assert len(train) == 4 and len(test) == 2
    record = test[1]
    turn = record.conversations[0]
    assert record.id == "q101" and turn.user == "What is field 101?"
    assert turn.gold == ("value 101", "Value 101")
    assert record.open_image(turn.images[0]).size == (120, 160)
    assert len(load_records(task, "train", docvqa_dir, limit=3)) == 3


def test_cauldron_layout_with_the_recipes_slices(cauldron_dir):
    from dataclasses import replace

    from training_core.tasks.spec import HFSource

    # the recipe evaluates on train[:500] and trains on train[500:]; the same cut at 5 for the 8-row fixture
    task = replace(get_task("nlvr2"), hf_sources={
        "train": HFSource("x", "nlvr2", "train[5:]", "cauldron"),
        "eval": HFSource("x", "nlvr2", "train[:5]", "cauldron"),
    })
    assert get_task("nlvr2").hf_sources["eval"].split == "train[:500]"
    train = load_records(task, "train", cauldron_dir)
    evals = load_records(task, "eval", cauldron_dir)
    assert len(train) == 3 and len(evals) == 5
    record = train[0]
    assert [t.user for t in record.conversations] == ["statement 5", "follow-up 5"]
    assert len(record.conversations[0].images) == 2 and record.conversations[1].images == ()


def test_convert_hf_writes_a_loadable_jsonl(docvqa_dir, tmp_path):
    counts = convert_hf("docvqa", tmp_path / "out", data_dir=docvqa_dir)
    assert counts == {"train": 4, "eval": 2}
    line = json.loads((tmp_path / "out" / "eval.jsonl").read_text().splitlines()[0])
    assert line["id"] == "q100" and line["conversations"][0]["answers"] == ["value 100", "Value 100"]
    records = load_records(get_task("docvqa"), "eval", tmp_path / "out")
    assert records[0].open_image(records[0].conversations[0].images[0]).size == (120, 160)
    with pytest.raises(DataError, match="exists"):
        convert_hf("docvqa", tmp_path / "out", data_dir=docvqa_dir)


def test_missing_cache_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache" / "datasets")
    with pytest.raises(DataError) as info:
        load_records(get_task("hateful_memes"), "train")
    message = str(info.value)
    assert "HuggingFaceM4/the_cauldron/hateful_memes" in message
    assert "datasets.load_dataset('HuggingFaceM4/the_cauldron', 'hateful_memes')" in message
    with pytest.raises(DataError, match="no ucf101_train.jsonl or train.jsonl"):
        load_records(get_task("ucf101"), "train", tmp_path)
    with pytest.raises(DataError, match="neither a save_to_disk dataset nor parquet"):
        load_records(get_task("docvqa"), "train", tmp_path)
