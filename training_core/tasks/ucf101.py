"""UCF-101 (docs/RECIPE.md §1.9-1.12): the converted jsonl (`ucf101_train.jsonl`, `ucf101_val.jsonl`, images/), 8 frames
per video, `num_crops` 4; every turn trained with its own frames (`<|image_1|>...<|image_8|>\n{user}`); evaluation
builds the prompt from all earlier turns and asks the last one; exact-match accuracy."""

from . import register
from .spec import TaskSpec

register(TaskSpec(
    name="ucf101",
    metric="accuracy",
    num_crops=4,
    train_turns="all",
    eval_turn="last",
    images_per_record=(1, 64),
    jsonl_names={"train": "ucf101_train.jsonl", "eval": "ucf101_val.jsonl"},
    description="UCF-101 subset video classification, 8 frames, accuracy",
))
