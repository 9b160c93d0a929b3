"""Batch collators: right padding for training, left padding for batched generation (docs/RECIPE.md §1.10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .encode import IGNORE_INDEX


def _images(items: list[dict]) -> dict:
    with_images = [it for it in items if "pixel_values" in it]
    if not with_images:
        return {}
    if len(with_images) == 1:  # the recipe's batch size 1: no copy
        return {"pixel_values": with_images[0]["pixel_values"], "image_sizes": with_images[0]["image_sizes"]}
    return {
        "pixel_values": torch.cat([it["pixel_values"] for it in with_images]),
        "image_sizes": torch.cat([it["image_sizes"] for it in with_images]),
    }


def _pad(seqs: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        if left:
            out[row, length - len(seq):] = seq
        else:
            out[row, : len(seq)] = seq
    return out


@dataclass(frozen=True)
class TrainCollator:
    """Right padding with the pad id (labels -100); `attention_mask = input_ids != pad_id` as the recipe (which
    also masks the final `<|endoftext|>`, harmless for a causal LM). DocVQA and Hateful Memes drop the mask."""

    pad_token_id: int
    keep_attention_mask: bool = True

    def __call__(self, items: list[dict]) -> dict:
        input_ids = _pad([it["input_ids"] for it in items], self.pad_token_id, left=False)
        batch = {"input_ids": input_ids, "labels": _pad([it["labels"] for it in items], IGNORE_INDEX, left=False)}
        if self.keep_attention_mask:
            batch["attention_mask"] = (input_ids != self.pad_token_id).long()
        batch.update(_images(items))
        batch["num_images"] = sum(it["num_images"] for it in items)
        batch["lengths"] = [len(it["input_ids"]) for it in items]  # real (unpadded) tokens per example
        return batch


@dataclass(frozen=True)
class EvalCollator:
    """Left padding, so every row's generation starts right after its prompt; the mask marks real tokens."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        seqs = [it["input_ids"] for it in items]
        lengths = torch.tensor([len(s) for s in seqs])
        input_ids = _pad(seqs, self.pad_token_id, left=True)
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        attention_mask = (positions >= input_ids.shape[1] - lengths.unsqueeze(1)).long()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **_images(items)}
        batch["ids"] = [it["id"] for it in items]
        batch["answers"] = [it["answers"] for it in items]
        return batch
