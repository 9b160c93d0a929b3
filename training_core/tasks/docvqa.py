"""DocVQA (docs/RECIPE.md §1.9-1.11). `docvqa`: the 1000/200 mini split, prompt `<|image_1|>\n{question}\nAnswer briefly.`,
a gold answer drawn at random every time the example is used; `docvqa_full`: the Cauldron's full DocVQA train set,
one random QA pair per use without the suffix, evaluated on the same 200-example mini test split. Metric: the
recipe's case-sensitive ANLS. Both collators drop the attention mask (batch size 1)."""

from . import register
from .spec import HFSource, TaskSpec

MINI = "nielsr/docvqa_1200_examples"
BRIEFLY = "\nAnswer briefly."

register(TaskSpec(
    name="docvqa",
    metric="anls",
    num_crops=16,
    train_turns="first",
    eval_turn="first",
    train_answer="random_gold",
    train_suffix=BRIEFLY,
    eval_suffix=BRIEFLY,
    keep_attention_mask=False,
    hf_sources={
        "train": HFSource(MINI, None, "train", "docvqa_mini"),
        "eval": HFSource(MINI, None, "test", "docvqa_mini"),
    },
    description="DocVQA mini split (1000 train / 200 test), ANLS",
))

register(TaskSpec(
    name="docvqa_full",
    metric="anls",
    num_crops=16,
    train_turns="random",
    eval_turn="first",
    eval_suffix=BRIEFLY,
    keep_attention_mask=False,
    hf_sources={
        "train": HFSource("HuggingFaceM4/the_cauldron", "docvqa", "train", "cauldron"),
        "eval": HFSource(MINI, None, "test", "docvqa_mini"),
    },
    description="DocVQA full train set (the Cauldron), evaluated on the 200-example mini test split, ANLS",
))
