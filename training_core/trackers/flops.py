"""Analytic training FLOPs of Phi-3(.5)-vision and model FLOPs utilisation (MFU). Pure functions: the report
imports them too (to put an implied MFU beside documented numbers), and reads the model's sizes as plain numbers
(`ModelShape`), so importing this module needs neither torch nor transformers.

Counted per example, from the config and the real token and crop counts:
- decoder: 2 x (qkv + o + gate_up + down) weights x tokens per layer, plus the LM head (2 x d x V per token);
- attention scores and values: 4 x L^2 x d per layer (the full L x L square, as eager/sdpa compute it);
- vision: every crop slot that goes through CLIP, zero-padded ones included (the official forward runs them all):
  patch embedding, then the layers up to the feature layer (23 of 24 for ViT-L/14-336), 577 tokens each;
- projector: 2 x (4C x d + d x d) per image token.
Training multiplies the forward by how much backward a part needs: weight matmuls x3 when their weights train,
x2 when only activation gradients pass through them (LoRA bases, frozen layers above trainable ones), x1 when
nothing below needs gradients (a frozen vision tower, or the 2024-06 recipe's decoder, see recipe_revisions.py:
only the LM head and the final norm get a gradient there); attention cores x3 whenever gradients flow, x1 when
not. `training_flops` is the *model* FLOPs (MFU's numerator): no recomputation. `executed_flops` adds what
gradient checkpointing recomputes (one more forward of every checkpointed layer that gets a backward): what the
hardware runs, so the ratio of two workloads' executed FLOPs bounds their speedup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training_core.gpus import lookup
from training_core.model.presets import CLIP_L14_336_NAME, CLIP_VIT_L14_336


@dataclass(frozen=True)
class Peak:
    """One GPU's dense (no structured sparsity) peak FLOP/s by precision of the matmuls, from its data sheet. fp32
    means true fp32 (PyTorch's default: TF32 off for matmuls)."""

    key: str
    gpu: str  # the GPU's short name in the catalogue (training_core/gpus.py)
    variant: tuple[str, ...]  # words that also appear in the upper-cased device name (PCIE, NVL, V100S)
    flops: dict[str, float]
    source: str

    @property
    def match(self) -> tuple[str, ...]:
        return (self.gpu, *self.variant)


# First match wins: the more specific names come first. Figures given with sparsity in a data sheet are halved.
PEAKS: tuple[Peak, ...] = (
    Peak("H200 NVL", "H200", ("NVL",), {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12},
         "NVIDIA H200 NVL data sheet: BF16/FP16 1,671 TFLOPS with sparsity, FP32 60 TFLOPS"),
    Peak("H200 SXM", "H200", (), {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
         "NVIDIA H200 SXM data sheet: BF16/FP16 1,979 TFLOPS with sparsity, FP32 67 TFLOPS"),
    Peak("H100 NVL", "H100", ("NVL",), {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12},
         "NVIDIA H100 NVL data sheet: BF16/FP16 1,671 TFLOPS with sparsity, FP32 60 TFLOPS"),
    Peak("H100 PCIe", "H100", ("PCIE",), {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12},
         "NVIDIA H100 PCIe data sheet: BF16/FP16 1,513 TFLOPS with sparsity, FP32 51 TFLOPS"),
    Peak("H100 SXM", "H100", (), {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
         "NVIDIA H100 SXM5 data sheet: BF16/FP16 1,979 TFLOPS with sparsity, FP32 67 TFLOPS"),
    Peak("H800 PCIe", "H800", ("PCIE",), {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12},
         "NVIDIA H800 PCIe data sheet: BF16/FP16 1,513 TFLOPS with sparsity, FP32 51 TFLOPS"),
    Peak("H800 SXM", "H800", (), {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
         "NVIDIA H800 SXM5 data sheet: BF16/FP16 1,979 TFLOPS with sparsity, FP32 67 TFLOPS"),
    Peak("A800", "A800", (), {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
         "NVIDIA A800 40/80 GB data sheet: BF16/FP16 312 TFLOPS, FP32 19.5 TFLOPS (the A100's figures)"),
    Peak("A100", "A100", (), {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
         "NVIDIA A100 40/80 GB SXM and PCIe data sheet: BF16/FP16 312 TFLOPS, FP32 19.5 TFLOPS"),
    Peak("V100S PCIe", "V100", ("V100S",), {"fp16": 130e12, "fp32": 16.4e12},
         "NVIDIA V100S PCIe data sheet: tensor FP16 130 TFLOPS, FP32 16.4 TFLOPS; no bf16"),
    Peak("V100 PCIe", "V100", ("PCIE",), {"fp16": 112e12, "fp32": 14.0e12},
         "NVIDIA V100 PCIe data sheet: tensor FP16 112 TFLOPS, FP32 14 TFLOPS; no bf16"),
    Peak("V100 SXM2", "V100", (), {"fp16": 125e12, "fp32": 15.7e12},
         "NVIDIA V100 SXM2 data sheet: tensor FP16 125 TFLOPS, FP32 15.7 TFLOPS; no bf16"),
    Peak("L40S", "L40S", (), {"bf16": 362.05e12, "fp16": 362.05e12, "fp32": 91.6e12},
         "NVIDIA L40S data sheet: BF16/FP16 362.05 TFLOPS (733 with sparsity), FP32 91.6 TFLOPS"),
)


def peak_entry(gpu_name: str) -> Peak | None:
    """The table's entry for a device name; None for unknown devices and for MIG slices (a slice has a fraction of
    the SMs: the whole GPU's peak would make its MFU several times too low)."""
    name = gpu_name.upper()
    known = lookup(gpu_name)
    if "MIG" in name or known is None:
        return None
    return next((p for p in PEAKS if p.gpu == known.name and all(part in name for part in p.variant)), None)


def peak_flops(gpu_name: str, precision: str) -> float | None:
    """Peak dense FLOP/s of one GPU for a precision, from its (marketing) name; None when unknown (CPU)."""
    entry = peak_entry(gpu_name)
    return entry.flops.get(precision) if entry else None


def no_peak_reason(gpu_name: str, precision: str) -> str | None:
    """Why there is no peak (so no MFU) for this device and precision; None when there is one."""
    entry = peak_entry(gpu_name)
    if entry is not None and precision in entry.flops:
        return None
    if "MIG" in gpu_name.upper():
        return f"{gpu_name} is a MIG slice: its share of the GPU's peak FLOP/s is not known"
    if entry is not None:
        return f"{entry.key} has no {precision} peak in its data sheet"
    return f"no peak FLOP/s known for {gpu_name}: add its data-sheet figures to PEAKS in training_core/trackers/flops.py (and the GPU to training_core/gpus.py)"


@dataclass(frozen=True)
class VisionShape:
    hidden_size: int
    intermediate_size: int
    patch_size: int
    image_size: int
    num_hidden_layers: int


@dataclass(frozen=True)
class ModelShape:
    """The sizes the FLOPs model reads: plain numbers, from a preset or a checkpoint's config (`model_shape`)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    layer_idx: int  # the CLIP layer whose features the projector reads (-2: the penultimate)
    vision: VisionShape


def model_shape(values: Mapping[str, Any]) -> ModelShape:
    """From a config's values: a preset (`presets.preset_dict`) or a loaded config (`Phi3VConfig.to_dict()`), read
    as `Phi3VConfig` reads them (the CLIP tower named by `img_processor`, or its explicit `vision_config`)."""
    img = values.get("img_processor") or {}
    vision = img.get("vision_config")
    if vision is None:
        if img.get("model_name", CLIP_L14_336_NAME) != CLIP_L14_336_NAME:
            raise ValueError(f"img_processor.model_name={img.get('model_name')!r}: only {CLIP_L14_336_NAME!r} is "
                             "known by name; describe any other tower with an explicit img_processor.vision_config")
        vision = CLIP_VIT_L14_336
    heads = int(values["num_attention_heads"])
    return ModelShape(
        hidden_size=int(values["hidden_size"]), num_hidden_layers=int(values["num_hidden_layers"]),
        num_attention_heads=heads, num_key_value_heads=int(values.get("num_key_value_heads") or heads),
        intermediate_size=int(values["intermediate_size"]), vocab_size=int(values["vocab_size"]),
        layer_idx=int(img.get("layer_idx", -2)),
        vision=VisionShape(**{k: int(vision[k]) for k in ("hidden_size", "intermediate_size", "patch_size",
                                                          "image_size", "num_hidden_layers")}),
    )


@dataclass(frozen=True)
class Trainable:
    """Which parts need which backward work (see module doc)."""

    decoder_weights: bool  # decoder layer weights train (full / frozen_vision)
    decoder_grads: bool  # gradients flow through the decoder layers (always, but the 2024-06 frozen decoder)
    vision_weights: bool  # CLIP + projector weights train (full)
    vision_grads: bool  # gradients flow through the vision tower (full, LoRA on the tower)
    head_weights: bool = True  # the LM head's weight trains (full / frozen_vision; LoRA: its adapter only)
    checkpointed: bool = True  # activation checkpointing: recomputed forwards (executed FLOPs only)
    every: int = 1  # layers 0, every, 2 x every, ... of each stack are checkpointed (1: all of them)

    def recomputed(self, layers: int) -> float:
        """The fraction of a stack's `layers` whose forward is run again in the backward."""
        if not self.checkpointed or layers <= 0:
            return 0.0
        return math.ceil(layers / self.every) / layers


def policy_every(policy: str | bool) -> int:
    """Activation checkpointing "all" / "none" / "every-K" (or the older true / false) as K, 0 for none."""
    if isinstance(policy, bool):
        return 1 if policy else 0
    named = {"all": 1, "none": 0}
    return named[policy] if policy in named else int(policy.removeprefix("every-"))


def trainable_for(strategy: str, vision_frozen: bool, revision: str | None = None,
                  checkpointing: bool | str = True) -> Trainable:
    from training_core.recipe_revisions import decoder_gets_gradients

    every = policy_every(checkpointing)
    weights_train = strategy in ("full", "frozen_vision")
    decoder = decoder_gets_gradients(strategy, vision_frozen, every > 0, revision)
    return Trainable(
        decoder_weights=weights_train and decoder,
        decoder_grads=decoder,
        vision_weights=weights_train and not vision_frozen,
        vision_grads=not vision_frozen,
        head_weights=weights_train,
        checkpointed=every > 0,
        every=max(every, 1),
    )


def _mult(weights: bool, grads: bool) -> int:
    return 3 if weights else 2 if grads else 1


def decoder_forward_flops(cfg: ModelShape, seq_len: int) -> tuple[float, float]:
    """(weight-matmul FLOPs, attention-core FLOPs) of one sequence through the decoder and the LM head."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    head_dim = d // cfg.num_attention_heads
    qkv = d * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
    per_layer = qkv + d * d + d * 2 * cfg.intermediate_size + cfg.intermediate_size * d
    weights = 2 * seq_len * (layers * per_layer + d * cfg.vocab_size)
    attention = layers * 4 * seq_len * seq_len * d
    return float(weights), float(attention)


def vision_forward_flops(cfg: ModelShape, crops: int, image_tokens: int) -> tuple[float, float, float]:
    """(CLIP weight-matmul FLOPs, CLIP attention FLOPs, projector FLOPs) for `crops` crop slots."""
    v = cfg.vision
    d, ff, patch = v.hidden_size, v.intermediate_size, v.patch_size
    patches = (v.image_size // patch) ** 2
    tokens = patches + 1
    layers = v.num_hidden_layers + 1 + cfg.layer_idx
    per_layer = 4 * d * d + 2 * d * ff
    weights = crops * (2 * patches * 3 * patch * patch * d + layers * 2 * tokens * per_layer)
    attention = crops * layers * 4 * tokens * tokens * d
    projector = image_tokens * 2 * (4 * d * cfg.hidden_size + cfg.hidden_size * cfg.hidden_size)
    return float(weights), float(attention), float(projector)


def _head_flops(cfg: ModelShape, seq_len: int) -> float:
    return float(2 * seq_len * cfg.hidden_size * cfg.vocab_size)


def training_flops(cfg: ModelShape, seq_lens: list[int], crops: int, image_tokens: int, trainable: Trainable) -> float:
    """Model FLOPs of one training pass (forward + backward) over a batch of sequences."""
    return _flops(cfg, seq_lens, crops, image_tokens, trainable, recompute=False)


def executed_flops(cfg: ModelShape, seq_lens: list[int], crops: int, image_tokens: int, trainable: Trainable) -> float:
    """`training_flops` plus what activation checkpointing recomputes: one more forward of each checkpointed layer
    (decoder and CLIP layers, all of them or every K-th) that gets a backward. Reentrant checkpointing skips the recompute of a layer no
    gradient reaches (the 2024-06 frozen decoder), as the hardware does."""
    return _flops(cfg, seq_lens, crops, image_tokens, trainable, recompute=trainable.checkpointed)


def _flops(cfg: ModelShape, seq_lens: list[int], crops: int, image_tokens: int, trainable: Trainable,
           recompute: bool) -> float:
    total = 0.0
    decoder_mult = _mult(trainable.decoder_weights, trainable.decoder_grads)
    head_mult = 3 if trainable.head_weights else 2  # the head always passes gradients down (or to its adapter)
    for length in seq_lens:
        weights, attention = decoder_forward_flops(cfg, length)
        head = _head_flops(cfg, length)
        layers = weights - head
        attention_mult = 3 if trainable.decoder_grads else 1
        total += decoder_mult * layers + head_mult * head + attention_mult * attention
        if recompute and trainable.decoder_grads:
            total += trainable.recomputed(cfg.num_hidden_layers) * (layers + attention)
    v_weights, v_attention, projector = vision_forward_flops(cfg, crops, image_tokens)
    vision_mult = _mult(trainable.vision_weights, trainable.vision_grads)
    total += vision_mult * (v_weights + projector) + (3 if trainable.vision_grads else 1) * v_attention
    if recompute and trainable.vision_grads:
        total += trainable.recomputed(cfg.vision.num_hidden_layers + 1 + cfg.layer_idx) * (v_weights + v_attention)
    return total


def mfu(flops: float, seconds: float, world_size: int, peak_per_gpu: float | None) -> float | None:
    if not peak_per_gpu or seconds <= 0:
        return None
    return flops / seconds / (world_size * peak_per_gpu)
