"""Data-pipeline throughput at num_crops 16 on 1700x2200 pages: the HD transform alone, and the full training
collate path (PNG decode, HD transform, chat template and tokenisation, placeholder expansion, collation)."""

import pytest

from benchmarks.conftest import report
from training_core.data.collate import TrainCollator
from training_core.data.datasets import TrainDataset
from training_core.data.sources import load_records
from training_core.data.synth import synthesize
from training_core.model import Phi3VProcessor, build_tiny_tokenizer
from training_core.model.image_processing import Phi3VImageProcessor
from training_core.tasks import get_task


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    directory = tmp_path_factory.mktemp("docvqa")
    synthesize("docvqa", directory, n_train=8, n_eval=0, seed=0, page_scale=1.0)
    return load_records(get_task("docvqa"), "train", directory / "train.jsonl")


@pytest.fixture(scope="module")
def processor():
    return Phi3VProcessor(build_tiny_tokenizer(), Phi3VImageProcessor(num_crops=16))


def test_hd_transform_letter_page(benchmark, pages, processor):
    letter = next(r for r in pages if r.open_image(r.conversations[0].images[0]).size == (1700, 2200))
    page = letter.open_image(letter.conversations[0].images[0])
    out = benchmark(processor.image_processor, [page])
    assert out["pixel_values"].shape == (1, 17, 3, 336, 336)
    report(benchmark, 1, "HD transform, 1700x2200 page, num_crops 16")


def test_full_collate_path(benchmark, pages, processor):
    task = get_task("docvqa")
    dataset = TrainDataset(pages, task, processor)
    collate = TrainCollator(processor.tokenizer.pad_token_id, task.keep_attention_mask)
    state = {"i": 0}

    def one_batch():
        state["i"] = (state["i"] + 1) % len(dataset)
        return collate([dataset[state["i"]]])

    batch = benchmark(one_batch)
    assert batch["pixel_values"].shape[1:] == (17, 3, 336, 336)
    report(benchmark, 1, "full collate path (decode + transform + tokenise + collate), num_crops 16")
