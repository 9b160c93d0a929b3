"""Turn a record into model inputs the way the recipe's collators do (docs/RECIPE.md §1.10).

Training: each selected turn is chat-templated on its own (`<|user|>\n{content}<|end|>\n<|assistant|>\n`) and run
through the processor with that turn's images; the answer `{answer}<|end|>\n<|endoftext|>` is tokenised without
special tokens; prompt tokens are labelled -100, answer tokens supervised; turns are concatenated.
Evaluation: the earlier turns (with their answers) and the asked turn form one prompt with the generation prompt.
"""

from __future__ import annotations

import torch

from training_core.tasks.spec import EvalItem, PromptTurn

from .records import Record

IGNORE_INDEX = -100


def answer_text(answer: str) -> str:
    return f"{answer}<|end|>\n<|endoftext|>"


def blank(image):
    """The ablation control: a white image of the same size (same crops and token count, no content)."""
    from PIL import Image

    return Image.new("RGB", image.size, (255, 255, 255))


def _open(record: Record, refs, ablation: str) -> list:
    images = [record.open_image(ref) for ref in refs]
    return [blank(im) for im in images] if ablation == "blank" else images


def encode_train(processor, record: Record, turns: list[PromptTurn], ablation: str = "none") -> dict:
    ids, labels, pixel_values, image_sizes = [], [], [], []
    for turn in turns:
        images = _open(record, turn.images, ablation)
        prompt = processor(processor.chat_prompt(turn.content), images)
        answer = processor.tokenizer(answer_text(turn.answer), add_special_tokens=False).input_ids
        prompt_ids = prompt["input_ids"][0]
        ids += [prompt_ids, torch.tensor(answer, dtype=torch.long)]
        labels += [torch.full_like(prompt_ids, IGNORE_INDEX), torch.tensor(answer, dtype=torch.long)]
        if images:
            pixel_values.append(prompt["pixel_values"])
            image_sizes.append(prompt["image_sizes"])
    out = {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "num_images": sum(len(t.images) for t in turns)}
    if pixel_values:
        out["pixel_values"] = _cat(pixel_values)
        out["image_sizes"] = _cat(image_sizes)
    return out


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def eval_prompt_text(processor, item: EvalItem) -> str:
    history = "".join(processor.chat_prompt(t.content) + answer_text(t.answer) for t in item.history)
    return history + processor.chat_prompt(item.turn.content)


def encode_eval(processor, record: Record, item: EvalItem, ablation: str = "none") -> dict:
    refs = [ref for t in item.history for ref in t.images] + list(item.turn.images)
    images = _open(record, refs, ablation)
    enc = processor(eval_prompt_text(processor, item), images)
    out = {"id": item.id, "input_ids": enc["input_ids"][0], "answers": list(item.answers), "num_images": len(images)}
    if images:
        out["pixel_values"] = enc["pixel_values"]
        out["image_sizes"] = enc["image_sizes"]
    return out
