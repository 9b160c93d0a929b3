"""Evaluation as the recipe does it (docs/RECIPE.md §1.11): greedy generation (max_new_tokens 64 by default), stopping
at the tokenizer's EOS `<|endoftext|>`, only the new tokens decoded with special tokens skipped; records sharded
over ranks and gathered; the task's metric on rank 0. DocVQA adds the standard (case-insensitive) ANLS beside the
recipe's, under its own name."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import distributed
from .data.collate import EvalCollator
from .data.datasets import EvalDataset
from .data.encode import answer_text
from .data.records import Record
from .metrics import accuracy, anls, anls_standard, auroc, exact_match, mean
from .tasks import TaskSpec


@torch.no_grad()
def predict(model, records: Sequence[Record], task: TaskSpec, processor, *, batch_size: int, max_new_tokens: int,
            device: torch.device, context, ablation: str = "none") -> list[dict]:
    """This rank's share of predictions: [{id, prediction, answers}]."""
    mine = [records[i] for i in range(distributed.rank(), len(records), distributed.world_size())]
    dataset = EvalDataset(mine, task, processor, ablation)
    collate = EvalCollator(processor.tokenizer.pad_token_id)
    tokenizer = processor.tokenizer
    label_ids = _first_tokens(tokenizer, task.binary_labels) if task.binary_labels else None
    out = []
    was_training = model.training
    model.eval()
    _keep_4bit_layers_trainable_on_cpu(model, device)
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")
                      if k in batch}
            with context:
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                           output_scores=label_ids is not None, return_dict_in_generate=True)
            new = generated.sequences[:, inputs["input_ids"].shape[1]:]
            scores = _positive_scores(generated.scores[0], label_ids) if label_ids else [None] * len(new)
            for rid, tokens, answers, p in zip(batch["ids"], new.tolist(), batch["answers"], scores, strict=True):
                text = tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                out.append({"id": rid, "prediction": text, "answers": answers, "score": p})
    finally:
        model.train(was_training)
    return out


def _keep_4bit_layers_trainable_on_cpu(model, device: torch.device) -> None:
    """bitsandbytes 0.50's CPU inference path repacks 4-bit weights in place when a layer is in eval mode, and the
    repacked layer then fails in training ("a view of a leaf Variable ... in-place"). Evaluating with those layers
    in training mode gives the same outputs (no dropout inside them) and leaves them trainable."""
    if device.type != "cpu":
        return
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module.train()


def _first_tokens(tokenizer, labels: tuple[str, str]) -> tuple[int, int]:
    """The first target token of each label, tokenised as the training targets are."""
    ids = tuple(tokenizer(answer_text(label), add_special_tokens=False).input_ids[0] for label in labels)
    if ids[0] == ids[1]:
        raise ValueError(f"labels {labels} share their first token; AUROC from first-token scores is impossible")
    return ids


def _positive_scores(logits: torch.Tensor, label_ids: tuple[int, int]) -> list[float]:
    """P(positive) among the two labels' first tokens at the first generated position."""
    pair = logits[:, list(label_ids)].float().softmax(dim=-1)
    return pair[:, 0].tolist()


def score(task: TaskSpec, predictions: list[dict]) -> dict:
    if not predictions:
        return {}
    if task.binary_labels and all(p.get("score") is not None for p in predictions):
        labels = [exact_match(p["answers"][0], task.binary_labels[0]) for p in predictions]
        metrics = {"accuracy": accuracy([p["prediction"] for p in predictions], [p["answers"][0] for p in predictions])}
        if any(labels) and not all(labels):
            metrics["auroc"] = auroc([p["score"] for p in predictions], [int(x) for x in labels])
        return metrics
    if task.metric == "anls":
        return {
            "anls": mean([anls(p["prediction"], p["answers"]) for p in predictions]),
            "anls_standard": mean([anls_standard(p["prediction"], p["answers"]) for p in predictions]),
        }
    return {"accuracy": accuracy([p["prediction"] for p in predictions], [p["answers"][0] for p in predictions])}


def evaluate(model, records, task, processor, *, batch_size, max_new_tokens, device, context,
             ablation: str = "none") -> tuple[dict, list]:
    local = predict(model, records, task, processor, batch_size=batch_size, max_new_tokens=max_new_tokens,
                    device=device, context=context, ablation=ablation)
    everything = [p for part in distributed.gather_objects(local) for p in part]
    everything.sort(key=lambda p: p["id"])
    return score(task, everything), everything
