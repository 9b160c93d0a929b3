"""`TaskSpec`: what a task adapter declares, and how a record becomes prompts (docs/RECIPE.md §1.10-1.11).

Every task writes a turn's content the same way: the turn's image tags concatenated (`<|image_1|><|image_2|>`),
a newline, the user text, then the task's suffix (`\nAnswer briefly.` for DocVQA). A user text that already
carries its own tags is used as it is. A turn without images is just the user text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from training_core.data.records import ImageRef, Record, Turn
from training_core.model.image_tags import IMAGE_TAG


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face dataset the recipe names; used from the local cache or a local directory, never fetched."""

    name: str
    config: str | None
    split: str  # may carry a slice, e.g. "train[500:]"
    layout: Literal["docvqa_mini", "cauldron"]


@dataclass(frozen=True)
class PromptTurn:
    """One supervised (or evaluated) turn: the user content with tags, its images, the target answer."""

    content: str
    images: tuple[ImageRef, ...]
    answer: str


@dataclass(frozen=True)
class EvalItem:
    id: str
    history: tuple[PromptTurn, ...]  # earlier turns, rendered with their answers
    turn: PromptTurn  # the turn to answer
    answers: tuple[str, ...]  # gold answers for the metric


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metric: Literal["anls", "accuracy"]
    num_crops: int
    train_turns: Literal["all", "first", "random"]
    eval_turn: Literal["first", "last"]
    train_answer: Literal["assistant", "random_gold"] = "assistant"
    train_suffix: str = ""
    eval_suffix: str = ""
    keep_attention_mask: bool = True  # DocVQA / Hateful Memes collators delete it (batch size 1)
    images_per_record: tuple[int, int] = (1, 1)  # min, max over a record's images
    binary_labels: tuple[str, str] | None = None  # (positive, negative): AUROC from first-token scores
    hf_sources: dict[str, HFSource] = field(default_factory=dict)  # "train" / "eval"
    jsonl_names: dict[str, str] = field(default_factory=lambda: {"train": "train.jsonl", "eval": "eval.jsonl"})
    description: str = ""

    # ------------------------------------------------------------------ checks
    def check_record(self, record: Record) -> str | None:
        n = len(record.all_images)
        low, high = self.images_per_record
        if not low <= n <= high:
            want = f"{low}" if low == high else f"{low} to {high}"
            return f"record {record.id}: task {self.name} expects {want} image(s) per record, found {n}"
        return None

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def content(user: str, n_images: int, suffix: str = "", first_tag: int = 1) -> str:
        if IMAGE_TAG.search(user) or n_images == 0:
            return user + suffix
        tags = "".join(f"<|image_{first_tag + k}|>" for k in range(n_images))
        return f"{tags}\n{user}{suffix}"

    def train_prompt_turns(self, record: Record, rng: random.Random) -> list[PromptTurn]:
        turns = record.conversations
        if self.train_turns == "all":
            return [self._prompt_turn(t, t.images, self._train_answer(t, rng)) for t in turns]
        chosen = turns[0] if self.train_turns == "first" else rng.choice(turns)
        return [self._prompt_turn(chosen, record.all_images, self._train_answer(chosen, rng))]

    def _train_answer(self, turn: Turn, rng: random.Random) -> str:
        return rng.choice(turn.gold) if self.train_answer == "random_gold" else turn.assistant

    def _prompt_turn(self, turn: Turn, images: tuple[ImageRef, ...], answer: str, suffix=None, first_tag=1):
        suffix = self.train_suffix if suffix is None else suffix
        return PromptTurn(self.content(turn.user, len(images), suffix, first_tag), tuple(images), answer)

    def eval_item(self, record: Record) -> EvalItem:
        turns = record.conversations
        if self.eval_turn == "first":
            first = turns[0]
            turn = self._prompt_turn(first, record.all_images, first.assistant, suffix=self.eval_suffix)
            return EvalItem(record.id, (), turn, first.gold)
        history, tag = [], 1
        for t in turns[:-1]:
            history.append(self._prompt_turn(t, t.images, t.assistant, suffix=self.eval_suffix, first_tag=tag))
            tag += len(t.images)
        last = turns[-1]
        turn = self._prompt_turn(last, last.images, last.assistant, suffix=self.eval_suffix, first_tag=tag)
        return EvalItem(record.id, tuple(history), turn, last.gold)
