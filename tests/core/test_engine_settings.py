"""Issue 33's cell settings without training: `engine`, `fsdp2_reshard`, `activation_checkpointing` (and its older
spelling), what they change in run ids, which combinations are refused and why, which layers are checkpointed, and
the FLOPs the recompute adds."""

import pytest
import torch

from training_core.spec import RunSpec, SpecError
from training_core.trackers.flops import executed_flops, model_shape, trainable_for, training_flops
from training_core.trackers.gradients import GradientCoverage

# run ids recorded before issue 33 (git 07782f3): the same cells keep them, however the new settings are spelled
OLD_IDS = {
    "58c323db6e3fe86b": [{}, {"engine": "zero2"}, {"activation_checkpointing": "all"}, {"gradient_checkpointing": True},
                         {"activation_checkpointing": "every-1"}],
    "38f9285b5c8d1a4c": [{"gradient_checkpointing": False}, {"activation_checkpointing": "none"},
                         {"activation_checkpointing": "none", "gradient_checkpointing": False, "engine": "zero2"}],
    "74b5d218bd63a49c": [{"strategy": "lora"}, {"strategy": "lora", "engine": "ddp"}],
    "23d73939e386c644": [{"strategy": "frozen_vision", "recipe_revision": "2024-06"},
                         {"strategy": "frozen_vision", "recipe_revision": "2024-06", "engine": "zero2"}],
}


@pytest.mark.parametrize("run_id", sorted(OLD_IDS))
def test_old_cells_keep_their_run_ids_however_the_new_settings_are_spelled(run_id):
    for fields in OLD_IDS[run_id]:
        assert RunSpec.parse(fields).run_id == run_id, fields


def test_a_new_engine_or_checkpointing_choice_is_another_cell():
    ids = {RunSpec.parse(f).run_id for f in ({}, {"engine": "ddp"}, {"engine": "zero3"}, {"engine": "fsdp2"},
                                             {"engine": "fsdp2", "fsdp2_reshard": True},
                                             {"activation_checkpointing": "every-2"})}
    assert len(ids) == 6


def test_the_two_spellings_of_checkpointing_fill_each_other():
    assert RunSpec.parse({"activation_checkpointing": "none"}).gradient_checkpointing is False
    assert RunSpec.parse({"gradient_checkpointing": False}).activation_checkpointing == "none"
    spec = RunSpec.parse({"activation_checkpointing": "every-3"})
    assert spec.gradient_checkpointing is True and spec.checkpointing == "every-3"
    assert RunSpec.parse({}).checkpointing == "all" and RunSpec.parse({}).train_engine == "zero2"
    assert RunSpec.parse({"strategy": "qlora"}).train_engine == "ddp"


@pytest.mark.parametrize(("fields", "words"), [
    ({"strategy": "lora", "engine": "zero2"}, "engine: 'zero2' cannot train strategy 'lora'"),
    ({"strategy": "qlora", "engine": "fsdp2"}, "4-bit base"),
    ({"engine": "zero3", "fsdp2_reshard": True}, "fsdp2_reshard: only applies to engine 'fsdp2'"),
    ({"engine": "fsdp2", "precision": "fp16"}, "fsdp2 with precision fp16 is not built"),
    ({"recipe_revision": "2024-06", "engine": "fsdp2"}, "replays the recipe as it ran"),
    ({"activation_checkpointing": "every-0"}, "activation_checkpointing"),
    ({"activation_checkpointing": "some"}, "activation_checkpointing"),
    ({"activation_checkpointing": "none", "gradient_checkpointing": True}, "contradicts gradient_checkpointing"),
    ({"engine": "megatron"}, "engine"),
    ({"engine": "zero3", "mode": "accuracy"}, "every rank must run every forward together"),
    ({"strategy": "lora", "engine": "fsdp2", "mode": "accuracy"}, "every rank must run every forward together"),
])
def test_combinations_that_cannot_work_are_refused_with_the_reason(fields, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(")):
        RunSpec.parse(fields)


@pytest.mark.parametrize(("policy", "decoder", "vision"), [
    ("all", [True] * 4, [True, True, True]), ("none", [False] * 4, [False] * 3),
    ("every-2", [True, False, True, False], [True, False, True]), ("every-3", [True, False, False, True],
                                                                  [True, False, False]),
])
def test_the_checkpointing_policy_picks_the_layers_of_each_stack(policy, decoder, vision):
    from training_core.model import build_config, build_model
    from training_core.strategies.base import enable_checkpointing

    config = build_config("tiny", num_hidden_layers=4)
    model = build_model(config, device="meta")
    enable_checkpointing(model, RunSpec(activation_checkpointing=policy))
    assert [layer.gradient_checkpointing for layer in model.model.layers] == decoder
    clip = model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers
    assert [layer.gradient_checkpointing for layer in clip] == vision[:len(clip)]


def test_executed_flops_count_the_recompute_of_the_checkpointed_layers_only():
    from training_core.model import build_config

    shape = model_shape(build_config("tiny", num_hidden_layers=4).to_dict())
    args = (shape, [64, 48], 4, 20)
    model = training_flops(*args, trainable_for("full", False, None, "all"))
    by_policy = {p: executed_flops(*args, trainable_for("full", False, None, p))
                 for p in ("all", "every-2", "every-4", "none")}
    assert by_policy["none"] == model  # nothing recomputed: executed = model FLOPs
    assert model < by_policy["every-4"] < by_policy["every-2"] < by_policy["all"]
    # every-2 of 4 decoder layers recomputes 2 of them: half the decoder's recompute (CLIP: 2 of its 3 used layers)
    all_extra, half_extra = by_policy["all"] - model, by_policy["every-2"] - model
    assert 0.4 * all_extra < half_extra < 0.75 * all_extra
    # the model FLOPs (MFU's numerator) do not depend on the policy
    assert training_flops(*args, trainable_for("full", False, None, "none")) == model


def test_fsdp2s_reduced_gradient_shards_are_what_the_coverage_check_reads():
    """FSDP2's backward runs on gathered copies: hooks on the sharded parameters never fire, so the check reads the
    reduced shards before the optimizer step. A parameter with no gradient, or an all-zero one, is flagged; an empty
    shard on this rank counts as zero here and is combined with the other ranks'."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].weight = torch.nn.Parameter(torch.empty(0, 2))  # this rank's empty shard of it
    calls: list = []
    coverage = GradientCoverage(model, before_step=calls)
    assert calls == [coverage.observe_reduced]
    model[0].weight.grad = torch.ones(2, 2)
    model[0].bias.grad = torch.zeros(2)
    model[1].weight.grad = torch.empty(0, 2)
    for call in calls:
        call()
    other_rank = [(True, True), (True, False), (True, True), (False, False)]
    report = coverage.finish(gather=lambda local: [local, other_rank])
    assert calls == []  # removed with the hooks
    assert report["zero_gradient"] == {"0": 2} and report["no_gradient"] == {"1": 2}
    assert report["untrained_params"] == 4 and report["flag"]
