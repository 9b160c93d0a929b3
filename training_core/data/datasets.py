"""Torch datasets over records: training items (re-sampled answers, as the recipe) and evaluation items."""

from __future__ import annotations

import random
from collections.abc import Sequence

from torch.utils.data import Dataset

from training_core.tasks.spec import TaskSpec

from .encode import encode_eval, encode_train
from .records import Record


class TrainDataset(Dataset):
    """Encoded training examples. Random choices (DocVQA's gold answer, a random QA pair) are drawn again every
    epoch, deterministically from (seed, epoch, index). An item is asked for by `(epoch, index)` (what the run's
    sampler yields, so loader workers need no shared state) or by `index` alone (epoch 0)."""

    def __init__(self, records: Sequence[Record], task: TaskSpec, processor, seed: int = 0, ablation: str = "none"):
        self.records, self.task, self.processor, self.seed = records, task, processor, seed
        self.ablation = ablation

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        return encode_train(self.processor, record, self.task.train_prompt_turns(record, rng), self.ablation)


class EvalDataset(Dataset):
    def __init__(self, records: Sequence[Record], task: TaskSpec, processor, ablation: str = "none"):
        self.records, self.task, self.processor, self.ablation = records, task, processor, ablation

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return encode_eval(self.processor, record, self.task.eval_item(record), self.ablation)
