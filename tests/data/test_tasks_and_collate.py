import random

import pytest

from tests.conftest import gradient_image
from training_core.data.collate import EvalCollator, TrainCollator
from training_core.data.datasets import EvalDataset, TrainDataset
from training_core.data.encode import IGNORE_INDEX, answer_text
from training_core.data.records import Record, Turn
from training_core.model import Phi3VProcessor, build_tiny_tokenizer
from training_core.model.image_processing import Phi3VImageProcessor
from training_core.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def processor():
    return Phi3VProcessor(build_tiny_tokenizer(), Phi3VImageProcessor(num_crops=4, crop_size=56))


def _img(seed=0, size=(80, 60)):
    image = gradient_image(*size, seed=seed)
    return lambda: image


def test_registry():
    assert sorted(TASKS) == ["docvqa", "docvqa_full", "hateful_memes", "nlvr2", "ucf101"]
    assert get_task("ucf101").num_crops == 4 and get_task("docvqa").num_crops == 16
    with pytest.raises(ValueError, match="unknown task 'vqa'"):
        get_task("vqa")


def test_docvqa_mini_prompt_and_random_gold_answer():
    task = get_task("docvqa")
    record = Record("1", "docvqa", (Turn((_img(),), "What is the date?", "May 5", ("May 5", "5 May", "05/05")),))
    (turn,) = task.train_prompt_turns(record, random.Random(0))
    assert turn.content == "<|image_1|>\nWhat is the date?\nAnswer briefly."
    drawn = {task.train_prompt_turns(record, random.Random(s))[0].answer for s in range(40)}
    assert drawn == {"May 5", "5 May", "05/05"}  # re-sampled among the gold answers
    item = task.eval_item(record)
    assert item.turn.content == "<|image_1|>\nWhat is the date?\nAnswer briefly."
    assert item.answers == ("May 5", "5 May", "05/05")
    assert task.metric == "anls" and not task.keep_attention_mask


def test_docvqa_full_uses_a_random_qa_pair_without_suffix_but_evaluates_on_mini_prompt():
    task = get_task("docvqa_full")
    record = Record("c", "docvqa", (Turn((_img(),), "q1", "a1"), Turn((), "q2", "a2"), Turn((), "q3", "a3")))
    picks = {task.train_prompt_turns(record, random.Random(s))[0] for s in range(30)}
    assert {p.content for p in picks} == {"<|image_1|>\nq1", "<|image_1|>\nq2", "<|image_1|>\nq3"}
    assert all(len(p.images) == 1 for p in picks)  # the image goes with whichever pair is drawn
    assert task.eval_item(record).turn.content == "<|image_1|>\nq1\nAnswer briefly."


def test_hateful_memes_first_pair_only():
    task = get_task("hateful_memes")
    record = Record("m", "hm", (Turn((_img(),), "Is it hateful?", "no"), Turn((), "second", "x")))
    (turn,) = task.train_prompt_turns(record, random.Random(0))
    assert (turn.content, turn.answer) == ("<|image_1|>\nIs it hateful?", "no")
    assert task.eval_item(record).answers == ("no",)


def test_nlvr2_every_turn_each_with_its_own_bos_and_template(processor):
    task = get_task("nlvr2")
    record = Record("n", "nlvr2", (Turn((_img(0), _img(1)), "Left has more?", "True"), Turn((), "Same?", "False")))
    turns = task.train_prompt_turns(record, random.Random(0))
    assert [t.content for t in turns] == ["<|image_1|><|image_2|>\nLeft has more?", "Same?"]
    assert [len(t.images) for t in turns] == [2, 0]
    item = TrainDataset([record], task, processor)[0]
    tok = processor.tokenizer
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    user = tok.convert_tokens_to_ids("<|user|>")
    starts = [i for i in range(len(ids) - 1) if ids[i] == tok.bos_token_id and ids[i + 1] == user]
    assert len(starts) == 2  # each turn is chat-templated on its own: BOS + <|user|> again
    supervised = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    expected = tok(answer_text("True"), add_special_tokens=False).input_ids + tok(answer_text("False"), add_special_tokens=False).input_ids
    assert supervised == expected
    assert item["pixel_values"].shape[0] == 2 and item["num_images"] == 2
    assert get_task("nlvr2").check_record(Record("x", "s", (Turn((_img(),), "q", "a"),))).endswith("found 1")


def test_label_masking_only_answer_tokens_supervised(processor):
    task = get_task("hateful_memes")
    record = Record("m", "hm", (Turn((_img(),), "Is it hateful?", "yes"),))
    item = TrainDataset([record], task, processor)[0]
    ids, labels = item["input_ids"], item["labels"]
    answer = processor.tokenizer(answer_text("yes"), add_special_tokens=False).input_ids
    n = len(answer)
    assert labels[-n:].tolist() == answer == ids[-n:].tolist()
    assert (labels[:-n] == IGNORE_INDEX).all()
    assert (ids < 0).sum() > 0 and (labels[ids < 0] == IGNORE_INDEX).all()  # image placeholders are never targets
    assert processor.tokenizer.decode(answer) == "yes<|end|>\n<|endoftext|>"


def test_train_collator_right_pads_and_masks_like_the_recipe(processor):
    pad = processor.tokenizer.pad_token_id
    records = [Record("a", "s", (Turn((_img(0),), "q", "yes"),)), Record("b", "s", (Turn((_img(1, (200, 60)),), "a longer question", "no"),))]
    data = TrainDataset(records, get_task("nlvr2"), processor)
    items = [data[0], data[1]]
    batch = TrainCollator(pad, keep_attention_mask=True)(items)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert (batch["input_ids"][short, min(lengths):] == pad).all()
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert batch["attention_mask"].tolist() == (batch["input_ids"] != pad).long().tolist()
    assert batch["attention_mask"][0, lengths[0] - 1] == 0  # the trailing <|endoftext|> too, as the recipe
    assert batch["pixel_values"].shape[0] == 2 and batch["image_sizes"].shape == (2, 2)
    assert "attention_mask" not in TrainCollator(pad, keep_attention_mask=False)(items)


def test_eval_collator_left_pads(processor):
    task = get_task("hateful_memes")
    records = [Record("a", "s", (Turn((_img(0),), "q", "yes"),)), Record("b", "s", (Turn((_img(1, (300, 60)),), "longer q", "no"),))]
    data = EvalDataset(records, task, processor)
    batch = EvalCollator(processor.tokenizer.pad_token_id)([data[0], data[1]])
    lengths = [len(data[i]["input_ids"]) for i in range(2)]
    short = lengths.index(min(lengths))
    pad_len = max(lengths) - min(lengths)
    assert batch["attention_mask"][short, :pad_len].sum() == 0 and batch["attention_mask"][short, pad_len:].all()
    assert batch["input_ids"][short, pad_len:].tolist() == data[short]["input_ids"].tolist()
    assert batch["answers"] == [["yes"], ["no"]] and batch["ids"] == ["a", "b"]
    # the prompt ends with the generation prompt, nothing of the answer
    text = processor.tokenizer.decode([t for t in data[0]["input_ids"].tolist() if t >= 0])
    assert text.endswith("q<|end|>\n<|assistant|>\n")


def test_ucf101_eval_uses_the_history_of_earlier_turns(processor):
    task = get_task("ucf101")
    record = Record("u", "ucf101", (Turn((_img(0), _img(1)), "Classify A", "Archery"), Turn((_img(2),), "Classify B", "Basketball")))
    item = task.eval_item(record)
    assert [t.content for t in item.history] == ["<|image_1|><|image_2|>\nClassify A"]
    assert item.turn.content == "<|image_3|>\nClassify B" and item.answers == ("Basketball",)
    encoded = EvalDataset([record], task, processor)[0]
    text = processor.tokenizer.decode([t for t in encoded["input_ids"].tolist() if t >= 0])
    assert "Archery<|end|>\n<|endoftext|>" in text and text.endswith("<|assistant|>\n")
    assert encoded["pixel_values"].shape[0] == 3
