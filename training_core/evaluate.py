"""Evaluation as the recipe does it (fact sheet 1.11): greedy generation (max_new_tokens 64 by default), stopping
at the tokenizer's EOS `<|endoftext|>`, only the new tokens decoded with special tokens skipped; records sharded
over ranks and gathered; the task's metric on rank 0. DocVQA adds the standard (case-insensitive) ANLS beside the
recipe's, under its own name."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import distributed
from .data.collate import EvalCollator
from .data.datasets import EvalDataset
from .data.records import Record
from .metrics import accuracy, anls, anls_standard, mean
from .tasks import TaskSpec


@torch.no_grad()
def predict(model, records: Sequence[Record], task: TaskSpec, processor, *, batch_size: int, max_new_tokens: int,
            device: torch.device, context) -> list[dict]:
    """This rank's share of predictions: [{id, prediction, answers}]."""
    mine = [records[i] for i in range(distributed.rank(), len(records), distributed.world_size())]
    dataset = EvalDataset(mine, task, processor)
    collate = EvalCollator(processor.tokenizer.pad_token_id)
    tokenizer = processor.tokenizer
    out = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")
                      if k in batch}
            with context:
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            new = generated[:, inputs["input_ids"].shape[1]:]
            for rid, tokens, answers in zip(batch["ids"], new.tolist(), batch["answers"], strict=True):
                text = tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                out.append({"id": rid, "prediction": text, "answers": answers})
    finally:
        model.train(was_training)
    return out


def score(task: TaskSpec, predictions: list[dict]) -> dict:
    if not predictions:
        return {}
    if task.metric == "anls":
        return {
            "anls": mean([anls(p["prediction"], p["answers"]) for p in predictions]),
            "anls_standard": mean([anls_standard(p["prediction"], p["answers"]) for p in predictions]),
        }
    return {"accuracy": accuracy([p["prediction"] for p in predictions], [p["answers"][0] for p in predictions])}


def evaluate(model, records, task, processor, *, batch_size, max_new_tokens, device, context) -> tuple[dict, list]:
    local = predict(model, records, task, processor, batch_size=batch_size, max_new_tokens=max_new_tokens,
                    device=device, context=context)
    everything = [p for part in distributed.gather_objects(local) for p in part]
    everything.sort(key=lambda p: p["id"])
    return score(task, everything), everything
