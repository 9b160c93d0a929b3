import pytest
import torch

from training_core.capabilities import unsupported_reason
from training_core.devices import Device
from training_core.precision import weights_dtype
from training_core.spec import RunSpec
from training_core.strategies import STRATEGIES, get_strategy
from training_core.strategies.base import build_base, count_parameters
from training_core.strategies.lora import qlora_quantization

# The tiny preset, by hand: decoder width 64, 2 layers, MLP 128, vocab 272; CLIP width 32, MLP 64, 3 layers (2 used),
# 56-pixel crops of 14-pixel patches (17 positions); projector 128 -> 64 -> 64.
D, L, FF, V = 64, 2, 128, 272
VD, VFF, VL = 32, 64, 3
EMBED = V * D
DECODER_LAYER = (3 * D) * D + D * D + (2 * FF) * D + D * FF + 2 * D
LANGUAGE = EMBED + L * DECODER_LAYER + D + V * D
CLIP_LAYER = 4 * (VD * VD + VD) + 2 * (VFF * VD) + VFF + VD + 4 * VD
VISION = VD + VD * 3 * 14 * 14 + 17 * VD + 2 * VD + VL * CLIP_LAYER + 2 * VD + (4 * VD * D + D) + (D * D + D) + 2 * 4 * VD
TOTAL = LANGUAGE + VISION


def lora_size(r: int, shapes) -> int:
    return sum(r * (i + o) for i, o in shapes)


LANGUAGE_TARGETS = [(D, 3 * D), (D, D), (D, 2 * FF), (FF, D)] * L + [(D, V)]
VISION_TARGETS = [(VD, VD)] * 4 * 2 + [(VD, VFF), (VFF, VD)] * 2 + [(4 * VD, D), (D, D)]  # 2 used CLIP layers


def _prepared(**fields):
    spec = RunSpec(model="tiny", lora_rank=4, **fields)
    torch.manual_seed(0)
    model = build_base(spec, torch.device("cpu"), torch.float32)
    return get_strategy(spec.strategy).prepare(model, spec)


def test_registry():
    assert sorted(STRATEGIES) == ["frozen_vision", "full", "lora", "qlora"]
    engines = {s: RunSpec(strategy=s).train_engine for s in STRATEGIES}  # the recipe's, unless a cell names another
    assert engines == {"full": "zero2", "frozen_vision": "zero2", "lora": "ddp", "qlora": "ddp"}
    assert get_strategy("qlora").quantized
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("sgd")


@pytest.mark.parametrize(
    ("fields", "trainable", "total"),
    [
        ({"strategy": "full"}, TOTAL, TOTAL),
        ({"strategy": "frozen_vision"}, TOTAL - VISION - EMBED, TOTAL),  # the shared wte freezes the embedding
        ({"strategy": "frozen_vision", "train_embedding": True}, TOTAL - VISION, TOTAL),
        ({"strategy": "full", "freeze_vision": True}, TOTAL - VISION - EMBED, TOTAL),
        # LoRA: the unused last CLIP layer and post_layernorm are removed first (the recipe's patch_clip_for_lora)
        ({"strategy": "lora"}, lora_size(4, LANGUAGE_TARGETS + VISION_TARGETS),
         TOTAL - CLIP_LAYER - 2 * VD + lora_size(4, LANGUAGE_TARGETS + VISION_TARGETS)),
        ({"strategy": "lora", "freeze_vision": True}, lora_size(4, LANGUAGE_TARGETS),
         TOTAL - CLIP_LAYER - 2 * VD + lora_size(4, LANGUAGE_TARGETS)),
    ],
)
def test_trainable_parameters_are_exactly_what_the_strategy_implies(fields, trainable, total):
    model = _prepared(**fields)
    assert count_parameters(model) == (trainable, total)


def test_lora_targets_and_init():
    model = _prepared(strategy="lora")
    names = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "lm_head" in names and "model.vision_embed_tokens.img_projection.0" in names
    assert "model.layers.0.self_attn.qkv_proj" in names
    assert "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.1.mlp.fc2" in names
    assert not any("layers.2" in n and "vision" in n for n in names)  # pruned
    b = dict(model.named_parameters())["model.layers.0.self_attn.qkv_proj.lora_B.default.weight"]
    a = dict(model.named_parameters())["model.layers.0.self_attn.qkv_proj.lora_A.default.weight"]
    assert torch.count_nonzero(b) == 0 and a.std() > 0  # gaussian init: A ~ N, B = 0


def test_qlora_quantises_the_base_and_trains_the_same_adapters():
    spec = RunSpec(model="tiny", strategy="qlora", precision="fp32", lora_rank=4)
    model = build_base(spec, torch.device("cpu"), torch.float32, qlora_quantization(spec))
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert type(qkv).__name__ == "Linear4bit" and qkv.weight.dtype == torch.uint8
    assert type(model.lm_head).__name__ == "Linear"  # the LM head stays unquantised
    model = get_strategy("qlora").prepare(model, spec)
    trainable, total = count_parameters(model)
    assert trainable == lora_size(4, LANGUAGE_TARGETS + VISION_TARGETS)
    assert total == TOTAL - CLIP_LAYER - 2 * VD + trainable


def test_qlora_keeps_layers_narrower_than_a_4bit_block_unquantised():
    from training_core.model import build_config

    spec = RunSpec(model="tiny", strategy="qlora", precision="fp32", lora_rank=4)
    model = build_base(spec, torch.device("cpu"), torch.float32, qlora_quantization(spec, build_config("tiny")))
    clip_q = model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers[0].self_attn.q_proj
    assert type(clip_q).__name__ == "Linear"  # 32 inputs < bitsandbytes' 64-value block
    assert type(model.model.layers[0].self_attn.qkv_proj).__name__ == "Linear4bit"
    assert type(model.model.vision_embed_tokens.img_projection[0]).__name__ == "Linear4bit"
    full = qlora_quantization(RunSpec(model="phi-3.5-vision", strategy="qlora"), build_config("phi-3.5-vision"))
    assert full.llm_int8_skip_modules == ["lm_head"]  # the real model: everything but the LM head is 4-bit


CPU = Device("cpu", 0, "x86_64", None, None)
A100 = Device("cuda", 0, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * 2**30)
V100 = Device("cuda", 0, "Tesla V100-SXM2-32GB", (7, 0), 32 * 2**30)
T4 = Device("cuda", 0, "Tesla T4", (7, 5), 16 * 2**30)


@pytest.mark.parametrize(
    ("device", "fields", "reason"),
    [
        (CPU, {"precision": "fp16"}, "fp16 mixed precision needs a CUDA GPU"),
        (CPU, {"precision": "bf16"}, None),
        (CPU, {"precision": "fp32", "strategy": "qlora"}, None),
        (CPU, {"attention": "flash_attention_2"}, "flash attention needs a CUDA GPU"),
        (CPU, {"gpu": "A100"}, "the cell is for A100 GPUs but no CUDA device"),
        (A100, {"attention": "flash_attention_2", "precision": "fp16", "gpu": "A100"}, "flash attention needs bf16"),
        (V100, {"precision": "bf16", "gpu": "V100"}, "bf16 needs an Ampere or newer GPU"),
        (V100, {"precision": "fp16", "gpu": "V100", "strategy": "qlora"}, "QLoRA's 4-bit kernels (bitsandbytes) need a Turing"),
        (T4, {"precision": "fp16", "strategy": "qlora", "gpu": "T4"}, None),
        (A100, {"precision": "bf16", "gpu": "A100"}, None),
    ],
)
def test_unsupported_combinations(device, fields, reason):
    got = unsupported_reason(RunSpec(**fields), device)
    assert (got is None) if reason is None else (reason in got), got


def test_weights_dtype_follows_the_recipe():
    assert weights_dtype(RunSpec(attention="flash_attention_2")) == torch.bfloat16
    assert weights_dtype(RunSpec(attention="sdpa", precision="bf16")) == torch.float32
