import pytest

from training_core.model import num_image_tokens, parse_image_tags


def test_chat_prompt_format(tiny_processor):
    prompt = tiny_processor.chat_prompt("<|image_1|>\nWhat is shown?\nAnswer briefly.")
    assert prompt == "<|user|>\n<|image_1|>\nWhat is shown?\nAnswer briefly.<|end|>\n<|assistant|>\n"


def test_placeholder_runs_and_bos_per_chunk(tiny_processor, tiny_tokenizer, make_image):
    text = "<|user|>\n<|image_1|>\nfirst<|image_2|>second<|end|>\n<|assistant|>\n"
    images = [make_image(80, 60), make_image(40, 90, seed=2)]
    out = tiny_processor(text, images)
    ids = out["input_ids"][0].tolist()
    n1 = num_image_tokens(80, 60, 4, crop_size=56)
    n2 = num_image_tokens(40, 90, 4, crop_size=56)
    chunks = ["<|user|>\n", "\nfirst", "second<|end|>\n<|assistant|>\n"]
    tok = [tiny_tokenizer(c).input_ids for c in chunks]
    assert ids == tok[0] + [-1] * n1 + tok[1] + [-2] * n2 + tok[2]
    bos = tiny_tokenizer.bos_token_id
    assert all(t[0] == bos for t in tok)  # every chunk starts with its own BOS, as the official processor
    assert ids.count(bos) == 3
    assert out["attention_mask"].tolist() == [[1] * len(ids)]
    assert out["pixel_values"].shape == (2, 5, 3, 56, 56)
    assert out["image_sizes"].shape == (2, 2)


def test_adjacent_tags_give_an_empty_chunk_with_bos(tiny_processor, tiny_tokenizer, make_image):
    out = tiny_processor("<|image_1|><|image_2|>\nsame?", [make_image(56, 56), make_image(56, 56)])
    ids = out["input_ids"][0].tolist()
    n = num_image_tokens(56, 56, 4, crop_size=56)
    bos = tiny_tokenizer.bos_token_id
    assert ids[: 1 + n + 1] == [bos] + [-1] * n + [bos]
    assert ids[2 + n : 2 + 2 * n] == [-2] * n


def test_text_only_prompt(tiny_processor, tiny_tokenizer):
    out = tiny_processor("hello")
    assert out["input_ids"][0].tolist() == tiny_tokenizer("hello").input_ids
    assert "pixel_values" not in out


@pytest.mark.parametrize(
    ("text", "n_images", "message"),
    [
        ("<|image_1|> and <|image_1|>", 1, "more than once"),
        ("<|image_2|> then <|image_1|>", 2, "out of order"),
        ("<|image_1|> <|image_3|>", 2, "without gaps"),
        ("<|image_2|>", 1, "without gaps"),
        ("<|image_1|>", 2, r"1 image tag\(s\) but 2 image\(s\)"),
        ("no tags", 1, r"0 image tag\(s\) but 1 image\(s\)"),
        ("<|image_1|><|image_2|>", 1, r"2 image tag\(s\) but 1 image\(s\)"),
    ],
)
def test_tag_validation_names_the_problem(text, n_images, message):
    with pytest.raises(ValueError, match=message):
        parse_image_tags(text, n_images)


def test_processor_rejects_bad_tags_before_work(tiny_processor, make_image):
    with pytest.raises(ValueError, match="but 2 image"):
        tiny_processor("<|image_1|>", [make_image(56, 56), make_image(56, 56)])


def test_processor_save_and_load_round_trip(tmp_path, tiny_processor, make_image):
    from training_core.model import Phi3VProcessor

    tiny_processor.save_pretrained(tmp_path)
    loaded = Phi3VProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor == tiny_processor.image_processor
    text = tiny_processor.chat_prompt("<|image_1|>\nq")
    a = tiny_processor(text, [make_image(70, 50)])
    b = loaded(text, [make_image(70, 50)])
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert Phi3VProcessor.from_pretrained(tmp_path, num_crops=16).num_crops == 16
