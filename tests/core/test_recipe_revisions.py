"""Recipe revisions on the tiny model: the 2024-06 recipe (no-grad hooks on the frozen image embedder, reentrant
checkpointing, input grads for peft models only) leaves the decoder without a gradient under frozen_vision; the
current recipe trains every trainable parameter; LoRA under 2024-06 freezes the tower and targets the language
model only, and its decoder adapters still learn. The gradient check sees each case."""

from __future__ import annotations

import pytest
import torch

from training_core import inputs
from training_core.engine import model_inputs
from training_core.recipe_revisions import REVISIONS, decoder_gets_gradients
from training_core.spec import RunSpec, SpecError
from training_core.strategies import get_strategy
from training_core.strategies.base import build_base, enable_checkpointing, model_config
from training_core.tasks import get_task
from training_core.trackers.gradients import GradientCoverage, group_of

DECODER = "model.layers."


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    spec = RunSpec(model="tiny", global_batch=1, num_crops=4)
    records, _ = inputs.records(spec, tmp_path_factory.mktemp("twin"))
    micro = inputs.MicroBatches(records, get_task(spec.task), inputs.build_processor(spec, model_config(spec)), spec)
    return model_inputs(next(iter(micro)), torch.device("cpu"))


def prepared(**fields):
    spec = RunSpec(model="tiny", lora_rank=4, precision="fp32", global_batch=1, num_crops=4, **fields)
    torch.manual_seed(0)
    model = get_strategy(spec.strategy).prepare(build_base(spec, torch.device("cpu"), torch.float32), spec)
    if spec.gradient_checkpointing:
        enable_checkpointing(model, spec)
    model.config.use_cache = False
    return model.train(), spec


def one_step(model, batch) -> tuple[dict, set[str]]:
    """One forward/backward and a plain AdamW step (no warm-up, no weight decay: a parameter changes iff it got a
    non-zero gradient). Returns the gradient check's report and the names of the parameters that changed."""
    coverage = GradientCoverage(model, model.unused_parameter_names())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    model(**batch).loss.backward()
    torch.optim.AdamW(trainable.values(), lr=1e-3, weight_decay=0.0).step()
    changed = {n for n, p in trainable.items() if not torch.equal(before[n], p.detach())}
    return coverage.finish(), changed


def test_2024_06_frozen_vision_trains_only_the_lm_head_and_the_final_norm(batch):
    model, _ = prepared(strategy="frozen_vision", recipe_revision="2024-06")
    report, changed = one_step(model, batch)
    decoder = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(DECODER)]
    assert len(decoder) == 12 and not [n for n in changed if n.startswith(DECODER)]  # 0 of 12 got a gradient
    assert changed == {"lm_head.weight", "model.norm.weight"}
    assert report["no_gradient"] == {"model.layers.*": sum(p.numel() for n, p in model.named_parameters()
                                                           if n.startswith(DECODER))}
    assert report["flag"] == "decoder gets no gradient: 82.2K trainable parameters not trained"


@pytest.mark.parametrize("strategy", ["frozen_vision", "full"])
def test_the_current_recipe_trains_every_trainable_parameter(batch, strategy):
    model, _ = prepared(strategy=strategy)
    report, changed = one_step(model, batch)
    used = {n for n, p in model.named_parameters() if p.requires_grad} - model.unused_parameter_names()
    assert changed == used and report["flag"] is None and report["untrained_params"] == 0
    if strategy == "full":  # CLIP's last layer and post_layernorm: unused by the forward, kept apart, not flagged
        assert set(report["expected"]["unused by the forward"]) == {
            "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.*",
            "model.vision_embed_tokens.img_processor.vision_model.post_layernorm"}


def test_2024_06_lora_freezes_the_tower_targets_the_language_model_and_its_decoder_adapters_learn(batch):
    model, spec = prepared(strategy="lora", recipe_revision="2024-06")
    assert spec.vision_frozen  # forced, as that revision did
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if "lora_" in n}
    assert "lm_head" in adapted and "model.layers.0.self_attn.qkv_proj" in adapted
    assert not [n for n in adapted if "vision_embed_tokens" in n]  # no CLIP or projector adapters
    current, _ = prepared(strategy="lora")
    assert [n for n, _ in current.named_parameters() if "vision_embed_tokens" in n and "lora_" in n]
    report, changed = one_step(model, batch)
    # every B gets a gradient (the embedding output is made to require grad for peft models, and the image
    # features are written into it in place under grad mode off, as in the official code); A is zero-grad at init
    assert {n for n in changed if "lora_B" in n} == {n for n, _ in model.named_parameters() if "lora_B" in n}
    assert report["flag"] is None and report["expected"]["LoRA A while B = 0 (init)"]


def test_without_checkpointing_the_2024_06_freeze_trains_the_decoder(batch):
    model, _ = prepared(strategy="frozen_vision", recipe_revision="2024-06", gradient_checkpointing=False)
    report, changed = one_step(model, batch)
    assert report["flag"] is None and any(n.startswith(DECODER) for n in changed)
    assert decoder_gets_gradients("frozen_vision", True, False, "2024-06")


def test_which_revisions_leave_the_decoder_untrained():
    assert set(REVISIONS) == {"current", "2024-06"}
    cases = {(s, r): decoder_gets_gradients(s, s != "full", True, r)
             for s in ("full", "frozen_vision", "lora", "qlora") for r in ("current", "2024-06")}
    assert [k for k, trains in cases.items() if not trains] == [("frozen_vision", "2024-06")]
    assert not decoder_gets_gradients("full", True, True, "2024-06")  # full with freeze_vision: true, as frozen


def test_specs_refuse_what_the_2024_06_recipe_could_not_do():
    with pytest.raises(SpecError, match="train_embedding: the 2024-06 recipe froze the image embedder"):
        RunSpec.parse({"model": "tiny", "strategy": "frozen_vision", "train_embedding": True,
                       "recipe_revision": "2024-06"})
    with pytest.raises(SpecError, match="always froze the vision tower under LoRA"):
        RunSpec.parse({"model": "tiny", "strategy": "lora", "freeze_vision": False, "recipe_revision": "2024-06"})
    with pytest.raises(SpecError, match="recipe_revision"):
        RunSpec.parse({"model": "tiny", "recipe_revision": "2023"})
    # later fields: at their default they leave earlier run ids valid
    assert RunSpec(model="tiny").run_id == RunSpec(model="tiny", recipe_revision=None).run_id
    assert RunSpec(model="tiny").run_id != RunSpec(model="tiny", recipe_revision="2024-06").run_id


def test_parameter_groups_are_named_by_their_module():
    assert group_of("model.layers.3.mlp.down_proj.weight") == "model.layers.*"
    assert group_of("lm_head.weight") == "lm_head"
    assert group_of("model.vision_embed_tokens.img_processor.vision_model.encoder.layers.23.mlp.fc1.weight") == \
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.*"


def test_the_embedding_writes_image_features_in_place_only_with_grad_mode_off(batch):
    """Under grad mode off the features go into the token embedding's own tensor (as the official code writes them),
    so a token embedding made to require grad stays one; with grad mode on the write is out of place (autograd)."""
    model, _ = prepared(strategy="full")
    embedder = model.model.vision_embed_tokens
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        out = embedder(batch["input_ids"], batch["pixel_values"], batch["image_sizes"])
    assert out is seen[-1]
    out = embedder(batch["input_ids"], batch["pixel_values"], batch["image_sizes"])
    assert out is not seen[-1] and out.requires_grad
    handle.remove()

