"""Hateful Memes (docs/RECIPE.md §1.9-1.11): the Cauldron's `hateful_memes`, `train[500:]` for training and the first 500
training examples for evaluation; the first QA pair, `<|image_1|>\n{user}`; exact-match accuracy. The collator
drops the attention mask (batch size 1)."""

from . import register
from .spec import HFSource, TaskSpec

CAULDRON = "HuggingFaceM4/the_cauldron"

register(TaskSpec(
    name="hateful_memes",
    metric="accuracy",
    num_crops=16,
    train_turns="first",
    eval_turn="first",
    keep_attention_mask=False,
    binary_labels=("yes", "no"),
    hf_sources={
        "train": HFSource(CAULDRON, "hateful_memes", "train[500:]", "cauldron"),
        "eval": HFSource(CAULDRON, "hateful_memes", "train[:500]", "cauldron"),
    },
    description="Hateful Memes, accuracy (first 500 training examples as evaluation set)",
))
