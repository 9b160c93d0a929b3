"""NLVR2 (docs/RECIPE.md §1.9-1.11): the Cauldron's `nlvr2`, two images per example; every QA turn is trained (turn 0
`<|image_1|><|image_2|>\n{user}` with both images, later turns `{user}`); evaluation on the first 500 training
examples, first QA pair, exact-match accuracy. Batches keep an attention mask (right padding)."""

from . import register
from .hateful_memes import CAULDRON
from .spec import HFSource, TaskSpec

register(TaskSpec(
    name="nlvr2",
    metric="accuracy",
    num_crops=16,
    train_turns="all",
    eval_turn="first",
    images_per_record=(2, 2),
    hf_sources={
        "train": HFSource(CAULDRON, "nlvr2", "train[500:]", "cauldron"),
        "eval": HFSource(CAULDRON, "nlvr2", "train[:500]", "cauldron"),
    },
    description="NLVR2, two images per example, accuracy",
))
