"""fp16 steps the loss scaler skipped are counted, and the model-state bytes are read after a step that was taken
(issue 32, item 12): a skipped first step has no optimizer states yet."""

from types import SimpleNamespace

import torch
from torch import nn

from training_core.devices import Device
from training_core.engine import PlainEngine
from training_core.run import model_state_bytes
from training_core.spec import RunSpec


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 1)

    def forward(self, input_ids=None, **_):
        return SimpleNamespace(loss=self.proj(input_ids.float()).pow(2).mean())


def test_a_step_with_inf_gradients_is_counted_as_skipped_and_has_no_optimizer_states_yet():
    spec = RunSpec(model="tiny", strategy="full", precision="fp16", gpus_per_node=1, global_batch=1)
    engine = PlainEngine(Toy(), spec, Device("cpu", 0, "cpu", None, None), total_steps=3)
    states_before = model_state_bytes(engine.module, engine.optimizer)
    engine.train_step([{"input_ids": torch.full((2, 4), float("inf"))}])
    assert engine.skipped_steps == 1
    assert model_state_bytes(engine.module, engine.optimizer) == states_before  # no Adam moments: not yet real
    engine.train_step([{"input_ids": torch.ones(2, 4)}])
    assert engine.skipped_steps == 1  # a finite step is taken
    assert model_state_bytes(engine.module, engine.optimizer) > states_before


def test_bf16_and_fp32_never_skip():
    for precision in ("bf16", "fp32"):
        spec = RunSpec(model="tiny", strategy="full", precision=precision, gpus_per_node=1, global_batch=1)
        engine = PlainEngine(Toy(), spec, Device("cpu", 0, "cpu", None, None), total_steps=2)
        engine.train_step([{"input_ids": torch.ones(2, 4)}])
        assert engine.skipped_steps == 0
