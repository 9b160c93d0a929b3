"""The training loop is equivalent to the recipe's HF Trainer step: same AdamW (0.9, 0.95, eps 1e-7), weight-decay
groups, linear warm-up schedule, gradient clipping at 1.0 and loss; checked against transformers' Trainer on the
tiny model (one process, fp32, batches in the same order)."""

import pytest
import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainingArguments

from tests.conftest import gradient_image
from training_core.data.collate import TrainCollator
from training_core.data.datasets import TrainDataset
from training_core.data.records import Record, Turn
from training_core.devices import Device
from training_core.engine import MODEL_INPUTS, PlainEngine
from training_core.model import build_model
from training_core.spec import RunSpec
from training_core.tasks import get_task

STEPS = 4


class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _InOrder(Trainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


@pytest.fixture(scope="module")
def items(tiny_processor):
    answers = ["yes", "no", "a longer answer", "42"]
    records = [Record(str(i), "t", (Turn((lambda i=i: gradient_image(70 + 10 * i, 60, seed=i),), f"q{i}?", a),))
               for i, a in enumerate(answers)]
    return [TrainDataset(records, get_task("hateful_memes"), tiny_processor)[i] for i in range(STEPS)]


def test_plain_engine_matches_hf_trainer(tmp_path, tiny_config, tiny_processor, items):
    spec = RunSpec(strategy="lora", precision="fp32", lr=3e-3, lr_warmup_steps=2, weight_decay=0.1, global_batch=1,
                   gradient_checkpointing=False)
    collate = TrainCollator(tiny_processor.tokenizer.pad_token_id, keep_attention_mask=True)

    torch.manual_seed(0)
    ours = build_model(tiny_config)
    engine = PlainEngine(ours, spec, Device("cpu", 0, "cpu", None, None), total_steps=STEPS)
    our_losses = [engine.train_step([collate([item])]).item() for item in items]

    torch.manual_seed(0)
    theirs = build_model(tiny_config)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=STEPS,
        learning_rate=spec.lr, weight_decay=spec.weight_decay, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-7,
        max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=spec.lr_warmup_steps, optim="adamw_torch",
        logging_steps=1, report_to=[], save_strategy="no", remove_unused_columns=False, use_cpu=True,
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = _InOrder(model=theirs, args=args, train_dataset=_Items(items),
                       data_collator=lambda batch: {k: v for k, v in collate(batch).items() if k in MODEL_INPUTS})
    trainer.train()
    their_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    assert len(their_losses) == STEPS
    assert our_losses == pytest.approx(their_losses, abs=2e-4)  # the Trainer logs losses rounded to 4 digits
    assert our_losses[-1] != our_losses[0]
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
