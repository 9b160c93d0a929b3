"""Bytes each rank sends per optimizer step, from each engine's own arithmetic (what it communicates, in which dtype,
how often), for ring collectives: with W ranks and f = (W - 1) / W, an all-reduce of S bytes sends 2fS per rank, a
reduce-scatter or an all-gather fS. Not measured: NCCL and gloo choose their own algorithms (tree, ring) and buckets;
this is the payload the engine asks for, the term that differs between engines.

Per optimizer step of m micro-batches (gradient accumulation), T trainable values, N values in all, w bytes per weight
as the engine computes with it, g bytes per gradient as it reduces them:
- ddp: one all-reduce of the fp32 gradients at the last micro-batch (`no_sync` before): 2f x 4T.
- zero1: DeepSpeed stage 1 reduces at the accumulation boundary only: f x gT, then all-gathers the updated weights:
  f x wT (deepspeed 0.19 stage_1_and_2.py: `partition_gradients or is_gradient_accumulation_boundary()`).
- zero2: reduces every micro-batch into the gradient partitions: m x f x gT, then f x wT.
- zero3: every micro-batch all-gathers the parameters for the forward and again for the backward (freed after each)
  and reduce-scatters the gradients: m x f x (2wN + gT).
- fsdp2: every micro-batch all-gathers each unit in the compute dtype for the forward (and again for the backward
  with `fsdp2_reshard`); the fp32 gradients are reduce-scattered at the last micro-batch: m x f x wN (x2) + f x 4T.
ZeRO's w and g are the compute dtype's (the module is held in bf16/fp16; fp32 cells: 4); DDP's and FSDP2's weights
are fp32 masters, FSDP2 gathers them cast to the compute dtype."""

from __future__ import annotations

from training_core.spec import RunSpec

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def step_bytes(spec: RunSpec, trainable: int, total: int) -> int:
    """Bytes one rank sends per optimizer step (0 for one process)."""
    world = spec.world_size
    if world == 1:
        return 0
    f, m, w = (world - 1) / world, spec.grad_accum, BYTES[spec.precision]
    engine = spec.train_engine
    if engine == "ddp":
        sent = 2 * f * 4 * trainable
    elif engine == "zero1":
        sent = f * w * trainable + f * w * trainable
    elif engine == "zero2":
        sent = m * f * w * trainable + f * w * trainable
    elif engine == "zero3":
        sent = m * f * (2 * w * total + w * trainable)
    elif engine == "fsdp2":
        gathers = 2 if spec.fsdp2_reshard else 1
        sent = m * f * gathers * w * total + f * 4 * trainable
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return round(sent)


PRECISION = {
    "ddp": "fp32 weights and AdamW states on every rank; {compute} autocast; fp32 gradient all-reduce",
    "zero1": "module in {compute}; fp32 master weights and AdamW states partitioned; {compute} gradient reduce",
    "zero2": "module in {compute}; fp32 master weights, AdamW states and gradients partitioned; {compute} gradient "
             "reduce",
    "zero3": "module partitioned in {compute}; fp32 master weights, AdamW states and gradients partitioned; "
             "{compute} gradient reduce",
    "fsdp2": "fp32 master weights and AdamW states sharded; units gathered in {compute}; fp32 gradient reduce-scatter",
}


def describe(spec: RunSpec) -> dict:
    """What the row records of its engine (`env.engine`): its name, how it holds and reduces in which precision, and
    for fsdp2 whether gathered parameters are freed after each forward."""
    out = {"name": spec.train_engine, "precision": PRECISION[spec.train_engine].format(compute=spec.precision)}
    if spec.train_engine == "fsdp2":
        out["reshard_after_forward"] = bool(spec.fsdp2_reshard)
    return out
