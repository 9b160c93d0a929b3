"""The step-time model that ranks `tune`'s candidates before any runs, and its fit to the trials afterwards.

One optimizer step of a rank, in seconds, is the sum of four terms, each a quantity over a rate:
- compute: the FLOPs the rank executes (the FLOPs model of training_core/trackers/flops.py over the cell's
  micro-batches at the traced sequence length, recompute of the checkpointing policy included) over the GPU's dense
  peak for the precision times an efficiency;
- communication: the bytes the engine sends per step (training_core/communication.py) over the link bandwidth
  (within a node, or between nodes when the cell has more than one), none hidden behind compute;
- optimizer: the bytes AdamW reads and writes per updated value (fp32 weight, gradient, two moments: 28 B) over the
  GPU's memory bandwidth; plain DDP updates every value on every rank, ZeRO and FSDP2 their shard;
- per micro-batch: a fixed overhead per forward and backward (launches, hooks, the loader's hand-over), so that fewer,
  larger micro-batches cost less.
The attention kernel: eager attention materialises each L x L score matrix (softmax and dropout read and write it),
so its attention-core FLOPs are counted again EAGER_ATTENTION times more (a memory-bound kernel at a fraction of the
matmul rate); sdpa's fused kernels and flash-attn are not told apart (the model has no term that would).
The rates below are stated assumptions, not measurements. Once trials exist, each term's scale is fitted to their
measured step times (non-negative least squares) and the fitted rates are reported; the rank correlation of the
model's prediction (before the fit) with the measured times is the honest check of the model."""

from __future__ import annotations

from dataclasses import dataclass

from training_core.communication import step_bytes
from training_core.gpus import lookup
from training_core.spec import RunSpec
from training_core.trackers.flops import (
    ModelShape,
    decoder_forward_flops,
    executed_flops,
    peak_flops,
    trainable_for,
    vision_forward_flops,
)

EFFICIENCY = 0.40  # of the dense peak, for this model's matmul sizes (an assumption; fitted below once measured)
NVLINK = 100e9  # bytes/s a rank sends within a node (NVLink ring bus bandwidth, conservative)
NETWORK = 12.5e9  # bytes/s a rank sends between nodes (100 Gb/s per GPU)
MICRO_BATCH_S = 0.020  # fixed seconds per micro-batch on a GPU
ADAMW_BYTES = 28  # read + written per updated value: fp32 weight (8), gradient (4), two fp32 moments (16)
# memory bandwidth (bytes/s) from the data sheets; others 1 TB/s
HBM = {"V100": 0.90e12, "T4": 0.32e12, "RTX8000": 0.672e12, "A100": 2.0e12, "A800": 2.0e12, "A10G": 0.6e12,
       "A10": 0.6e12, "L40S": 0.864e12, "H100": 3.35e12, "H800": 3.35e12, "H200": 4.8e12}
# a CPU process (gloo), only to order candidates before the trials measure them: compute and per-micro-batch rates
# as the tune_cpu trials on the project's 2-core machine fitted them (nominal 20 GFLOP/s and 10 ms came out 2.6x and
# 2.0x off: 7.8 GFLOP/s, 20 ms); link and memory nominal
CPU = {"flops": 8e9, "link": 2e9, "memory": 1e10, "micro_batch_s": 0.020}
EAGER_ATTENTION = 3.0  # eager's attention core costs this many times more than a fused kernel's (an assumption)
TOKENS_PER_CROP = 144  # image tokens per 336x336 crop after the projector's 2x2 merge ((336 / 14 / 2)^2)


@dataclass(frozen=True)
class Rates:
    flops_per_s: float
    link_bytes_per_s: float
    memory_bytes_per_s: float
    micro_batch_s: float

    def describe(self) -> str:
        return (f"{self.flops_per_s / 1e12:.3g} TFLOP/s, link {self.link_bytes_per_s / 1e9:.3g} GB/s, memory "
                f"{self.memory_bytes_per_s / 1e9:.3g} GB/s, {self.micro_batch_s * 1e3:.3g} ms per micro-batch")


def rates_for(spec: RunSpec) -> Rates:
    if spec.gpu.lower() == "cpu":
        return Rates(CPU["flops"], CPU["link"], CPU["memory"], CPU["micro_batch_s"])
    peak = peak_flops(spec.gpu, spec.precision) or peak_flops(spec.gpu, "fp32") or 1e14
    gpu = lookup(spec.gpu)
    memory = HBM.get(gpu.name if gpu else "", 1e12)
    return Rates(peak * EFFICIENCY, NETWORK if spec.nodes > 1 else NVLINK, memory, MICRO_BATCH_S)


@dataclass(frozen=True)
class Terms:
    """The quantities of one optimizer step of one rank (the rates turn them into seconds)."""
    flops: float
    comm_bytes: float
    optimizer_bytes: float
    micro_batches: int

    def seconds(self, rates: Rates) -> dict[str, float]:
        return {"compute": self.flops / rates.flops_per_s, "communication": self.comm_bytes / rates.link_bytes_per_s,
                "optimizer": self.optimizer_bytes / rates.memory_bytes_per_s,
                "micro-batches": self.micro_batches * rates.micro_batch_s}


def terms(spec: RunSpec, shape: ModelShape, sequence: int, params: int, trainable: int) -> Terms:
    """`sequence`: tokens of one example (the traced micro-batch's longest); `params`/`trainable`: values."""
    crops = (spec.num_crops or 16) + 1
    per_rank = spec.global_batch // spec.world_size
    which = trainable_for(spec.strategy, spec.vision_frozen, spec.recipe_revision, spec.checkpointing)
    flops = executed_flops(shape, [sequence] * per_rank, crops * per_rank, crops * TOKENS_PER_CROP * per_rank, which)
    if spec.attention == "eager":  # the attention core, forward and backward (x3), decoder and CLIP
        core = decoder_forward_flops(shape, sequence)[1] + vision_forward_flops(shape, crops, 0)[1]
        flops += EAGER_ATTENTION * 3 * core * per_rank
    updated = trainable if spec.train_engine == "ddp" else -(-trainable // spec.world_size)
    return Terms(flops, float(step_bytes(spec, trainable, params)), float(ADAMW_BYTES * updated), spec.grad_accum)


def predict(spec: RunSpec, t: Terms) -> tuple[float, dict[str, float]]:
    parts = t.seconds(rates_for(spec))
    return sum(parts.values()), parts


# ------------------------------------------------------------------------------------------------- the fit
TERM_NAMES = ("compute", "communication", "optimizer", "micro-batches")


def fit_scales(parts: list[dict[str, float]], measured: list[float]) -> dict[str, float] | None:
    """Non-negative scales s of the four terms so that sum(s_k x term_k) fits the measured step times (least squares;
    a term whose scale comes out negative is dropped and the rest refitted). None with fewer than two trials."""
    import numpy as np

    if len(measured) < 2:
        return None
    a = np.array([[p[name] for name in TERM_NAMES] for p in parts], dtype=float)
    b = np.array(measured, dtype=float)
    active = [k for k in range(len(TERM_NAMES)) if a[:, k].any()]
    while active:
        solution, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (solution >= 0).all():
            scales = dict.fromkeys(TERM_NAMES, 0.0)
            scales.update({TERM_NAMES[k]: float(v) for k, v in zip(active, solution, strict=True)})
            return scales
        active = [k for k, v in zip(active, solution, strict=True) if v >= 0]
    return None


def fitted_rates(rates: Rates, scales: dict[str, float]) -> Rates:
    """The rates the fitted scales imply (a scale of 0: that term explained nothing; its rate is left as assumed)."""
    def scaled(value: float, name: str) -> float:
        return value / scales[name] if scales.get(name) else value

    return Rates(scaled(rates.flops_per_s, "compute"), scaled(rates.link_bytes_per_s, "communication"),
                 scaled(rates.memory_bytes_per_s, "optimizer"),
                 rates.micro_batch_s * scales["micro-batches"] if scales.get("micro-batches") else rates.micro_batch_s)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None for fewer than 3 pairs or a constant side."""
    import numpy as np

    if len(x) < 3:
        return None

    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = values.argsort(kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=float)
        for v in np.unique(values):
            same = values == v
            r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])
