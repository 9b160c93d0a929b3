"""The memory estimator (training_core/estimate): one optimizer step traced with fake tensors through the cell's own
code, checked against a real CPU step whose peak comes from the torch profiler's allocator events (not from the
estimator's tracker): every strategy of cpu_smoke on the tiny preset, with and without checkpointing, fp32 and bf16,
and (make test-estimator) the wide-2l preset at the real widths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training_core.estimate.fit import GIB, MARGIN_RULE, fit, needed_bytes
from training_core.estimate.trace import NotEstimated, adamw_step_temporaries, deepspeed_states, trace_step
from training_core.estimate.validate import measured_adamw_temporaries, measured_step_peak
from training_core.gpus import memory_names
from training_core.spec import RunSpec

ROOT = Path(__file__).resolve().parents[2]


def tiny(**fields) -> RunSpec:
    return RunSpec(**{"model": "tiny", "precision": "fp32", "global_batch": 1, "num_crops": 4, "lora_rank": 4, **fields})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("twin")


@pytest.mark.parametrize("checkpointing", [True, False])
def test_predicted_peak_of_a_lora_step_is_within_10_percent_of_the_allocators(data, checkpointing):
    spec = tiny(strategy="lora", gradient_checkpointing=checkpointing)
    predicted = trace_step(spec, data, block=1)  # the CPU allocator does not round like CUDA's
    measured = measured_step_peak(spec, data)
    assert predicted.peak_bytes == pytest.approx(measured, rel=0.10)
    assert predicted.phase == "backward" and predicted.breakdown["weights"] > 0
    assert predicted.breakdown["activations"] > predicted.breakdown["gradients"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,precision,attention", [("qlora", "fp32", "eager"), ("qlora", "bf16", "sdpa"),
                                                          ("lora", "bf16", "sdpa"), ("lora", "bf16", "eager")])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_lora_and_qlora_in_cpu_smokes_precisions_within_10_percent(data, strategy, precision, attention,
                                                                   checkpointing):
    """cpu_smoke's precisions and attentions for the DDP strategies (the DeepSpeed ones: below). QLoRA's 4-bit
    stand-in against real bitsandbytes layers; its unquantised weights are copied out of the safetensors map first
    (validate._own_mapped_weights), as a GPU copies them into device memory."""
    spec = tiny(strategy=strategy, precision=precision, attention=attention, gradient_checkpointing=checkpointing)
    predicted = trace_step(spec, data, block=1).peak_bytes
    measured = measured_step_peak(spec, data)
    assert predicted == pytest.approx(measured, rel=0.10), (predicted, measured)


def test_the_cpu_check_counts_a_cells_bytes_only(data):
    """Two checks in one process measure the same: what an earlier one left allocated is not counted."""
    spec = tiny(strategy="lora")
    first = measured_step_peak(spec, data)
    keep = [torch.empty(4_000_000, dtype=torch.uint8)]  # held across the second check
    second = measured_step_peak(spec, data)
    assert second == pytest.approx(first, rel=0.02) and keep


def test_mapped_weights_are_copied_into_allocated_memory(tmp_path):
    """A tensor whose storage lies in a file mapping (safetensors loads so) becomes allocator memory; others stay."""
    from safetensors.torch import load_file, save_file

    from training_core.estimate.validate import _file_mapped, _own_mapped_weights

    save_file({"w": torch.ones(1024, 64)}, tmp_path / "w.safetensors")
    module = torch.nn.Linear(64, 1024, bias=False)
    own = torch.nn.Linear(4, 4)
    module.weight.data = load_file(tmp_path / "w.safetensors")["w"]
    mapped = lambda t: any(a <= t.untyped_storage().data_ptr() < b for a, b in _file_mapped())  # noqa: E731
    assert mapped(module.weight)
    before = own.weight.data_ptr()
    assert _own_mapped_weights(torch.nn.Sequential(module, own)) == 1024 * 64 * 4
    assert not mapped(module.weight) and bool((module.weight == 1).all()) and own.weight.data_ptr() == before


def test_the_prediction_follows_the_cell_not_a_constant(data):
    """Checkpointing off holds every layer's activations: both the prediction and the allocator's peak grow by more
    than a third, so no constant is within 10% of both cells."""
    on, off = (trace_step(tiny(strategy="lora", gradient_checkpointing=c), data, block=1).peak_bytes
               for c in (True, False))
    measured_on, measured_off = (measured_step_peak(tiny(strategy="lora", gradient_checkpointing=c), data)
                                 for c in (True, False))
    assert off / on > 1.3 and measured_off / measured_on > 1.3
    assert off / on == pytest.approx(measured_off / measured_on, rel=0.10)


def test_the_longest_example_sets_the_batch(data):
    from training_core.estimate.trace import longest_batch

    batch, examples = longest_batch(tiny(strategy="lora"), data)
    assert examples > 1 and batch["input_ids"].shape[0] == 1
    from training_core import inputs
    from training_core.data.stats import example_length
    from training_core.strategies.base import model_config
    from training_core.tasks import get_task

    spec = tiny(strategy="lora")
    config = model_config(spec)
    processor = inputs.build_processor(spec, config)
    train, _ = inputs.records(spec, data)
    lengths = [example_length(get_task(spec.task), r, processor.tokenizer, processor.chat_prompt, 4, config.crop_size,
                              config.patch_size) for r in train]
    assert batch["input_ids"].shape[1] == max(lengths)


def test_zero2_buffers_by_hand():
    """DeepSpeed ZeRO-2 per rank, the recipe's config: fp32 master 4 B + Adam 8 B per trainable parameter over the
    world size, the bf16 gradient partition, two reduce buckets of 5e8 bf16 elements (overlap_comm), and at the step
    the partition's fp32 gradient plus AdamW's own temporaries on the cell's device: two fp32 partitions on a CPU
    (single-tensor path; three in all, as measured on a CPU), one on a GPU (foreach path): ~14% of a full H200 cell's
    peak (issue 32, item 9)."""
    spec = RunSpec(model="tiny", strategy="full", precision="bf16", gpus_per_node=8, global_batch=64)
    z = deepspeed_states(spec, 4_000_000_000)
    part = 500_000_000
    assert (z.master, z.moments, z.grad_partition) == (4 * part, 8 * part, 2 * part)
    assert z.buckets == 2 * 500_000_000 * 2 and z.step_temporaries == 12 * part
    on_gpu = deepspeed_states(spec.model_copy(update={"gpu": "H200"}), 4_000_000_000)
    assert on_gpu.step_temporaries == 8 * part and on_gpu.master == z.master
    # one flat partition per param group (decay, no decay): the flat gradients add up, AdamW's temporaries do not
    grouped = deepspeed_states(spec.model_copy(update={"gpu": "H200"}), 4_000_000_000, [3_200_000_000, 800_000_000])
    assert grouped.step_temporaries == 4 * part + 4 * 400_000_000


@pytest.mark.parametrize("foreach", [False, True])
def test_adamws_traced_temporaries_are_the_allocators(foreach):
    """The traced AdamW step (fake tensors) against the CPU allocator's running total of a real step with the same
    implementation: single-tensor two temporaries of the largest group, foreach one; groups one after the other."""
    groups = [2_000_000, 300_000]
    traced = adamw_step_temporaries(groups, foreach, block=1)
    assert traced == (1 if foreach else 2) * 4 * 2_000_000
    assert measured_adamw_temporaries(groups, foreach) == pytest.approx(traced, rel=0.01)


def test_the_margin_rule_and_unknown_gpus():
    assert needed_bytes(10 * GIB, 1) == int(11 * GIB + GIB / 2)
    assert needed_bytes(10 * GIB, 8) == int(11 * GIB + GIB / 2 + GIB / 4)
    assert fit(20 * GIB, 8, "A100").fits and not fit(30 * GIB, 8, "V100").fits
    assert fit(30 * GIB, 8, "V100").reason == "does not fit (33.8 of 31.7 GiB)"
    unknown = fit(1, 1, "B200")
    assert unknown.fits is None and "unknown GPU 'B200'" in unknown.reason and "training_core/gpus.py" in unknown.reason
    assert set(memory_names()) >= {"A100", "H100", "V100"} and "caching-allocator slack" in MARGIN_RULE


@pytest.mark.slow
def test_estimate_covers_every_cell_of_a_grid_and_says_why_when_it_cannot(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nhardware: {gpu: A100, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, precision: bf16, num_crops: 4, global_batch: 2, "
                    "lora_rank: 4}\n"
                    "axes: {strategy: [lora, qlora], gradient_checkpointing: [true, false]}\n"
                    "references:\n  - {match: {strategy: lora}, key: a100/lora/1node/eager}\n"
                    "include:\n  - {strategy: lora, precision: fp16, attention: flash_attention_2}\n")
    md = tmp_path / "out" / "g.md"
    out = subprocess.run([sys.executable, "-m", "harness", "estimate", str(grid), "--json", "--gpu", "A100",
                          "--gpu", "B200", "--data-root", str(tmp_path / "data"), "--out", str(md)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    cells = {c["cell"]: c for c in report["cells"]}
    estimated = [c for c in cells.values() if "predicted" in c]
    assert len(estimated) == 4 and len({c["predicted"]["peak_bytes"] for c in estimated}) == 4
    assert all(c["fits"]["A100"]["fits"] is True and c["fits"]["B200"]["fits"] is None for c in estimated)
    invalid = [c for c in cells.values() if "predicted" not in c]
    assert len(invalid) == 1 and invalid[0]["reason"].startswith("not estimated: invalid")
    assert report["margin_rule"] == MARGIN_RULE
    text = md.read_text()  # the markdown report: predicted beside documented, saying what each is
    assert "not reserved memory" in text and "does not say whether it is allocated, reserved" in text
    lora = next(c for c in estimated if c["spec"]["strategy"] == "lora")
    ratio = 50 * GIB / lora["predicted"]["peak_bytes"]  # the guide's ~50 GB for 8xA100 LoRA, eager
    assert f"| ~50 GB | {ratio:.2f}x |" in text
    assert text.count("| ~50 GB |") == 2 and "not estimated: invalid" in text


def test_estimate_out_must_be_a_markdown_file(tmp_path):
    from harness.cli import main

    for bad in (tmp_path, tmp_path / "rows.jsonl"):
        assert main(["estimate", "cpu_smoke", "--out", str(bad)]) == 2  # refused before anything is traced
    assert list(tmp_path.iterdir()) == []


ZERO_CHECK = r"""
import json, sys
from pathlib import Path
import training_core.engine as engine
import training_core.estimate.trace as trace
from training_core.estimate.validate import measured_step_peak
from training_core.spec import RunSpec

recipe = engine.ds_config
def small_buckets(spec, world):  # the recipe's 2 x 5e8-element buckets would hide everything else in a tiny model
    config = recipe(spec, world)
    config["zero_optimization"].update(reduce_bucket_size=50_000, allgather_bucket_size=50_000)
    return config
engine.ds_config = trace.ds_config = small_buckets
out = {}
for strategy, checkpointing, *more in json.loads(sys.argv[2]):
    fields = dict(zip(("engine", "global_batch"), more)) if more else {}
    spec = RunSpec(model="tiny", precision="fp32", num_crops=4, strategy=strategy,
                   gradient_checkpointing=checkpointing, **{"global_batch": 1, **fields})
    out["/".join(str(v) for v in (strategy, checkpointing, *more))] = [trace.trace_step(spec, Path(sys.argv[1]), block=1).peak_bytes,
                                          measured_step_peak(spec, Path(sys.argv[1]))]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_engine_against_real_steps_on_one_process(tmp_path):
    """The estimate of each engine against the allocator's peak of real steps of the same cell (one process: every
    cell in one subprocess, as it initialises torch.distributed), small DeepSpeed buckets so that the rest shows:
    - ZeRO-2 (the recipe's full and frozen_vision): the weights, the fp32 master, Adam's moments, the gradient
      partition, the buckets while the backward reduces, the step's temporaries, the traced activations;
    - plain DDP (fp32 weights and AdamW states, the never-used CLIP layers frozen), ZeRO-1 (whose gradients are held
      whole between accumulation boundaries: global batch 2 on one process is two micro-batches), ZeRO-3 (every
      partition whole on one process, every tiny parameter under the persistence threshold) and FSDP2 (on one
      process the shards are whole; AdamW's single-tensor path steps them one at a time) (issue 33).
    Within 10%. Measured here: zero2 full +0.1% / +0.3% (ckpt / none), frozen_vision -0.1%; ddp +0.9% / +1.5% (none,
    accumulating); zero1 +0.1% / -3.2% (accumulating); zero2 accumulating +0.1%; zero3 -2.6% / -1.2%; fsdp2 +3.4% /
    +8.2% (accumulating). Known: frozen_vision without checkpointing +8.5% .. +14.4% from run to run (when the
    overlapped reduction's buckets come relative to the tower's activations depends on timing): above, under 1.2x."""
    cases = [["full", True], ["full", False], ["frozen_vision", True], ["frozen_vision", False],
             ["full", True, "ddp", 1], ["full", False, "ddp", 2], ["full", True, "zero1", 1], ["full", True, "zero1", 2],
             ["full", True, "zero2", 2], ["full", True, "zero3", 1], ["full", False, "zero3", 2],
             ["full", True, "fsdp2", 1], ["full", True, "fsdp2", 2]]
    out = subprocess.run([sys.executable, "-c", ZERO_CHECK, str(tmp_path), json.dumps(cases)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({k: f"{p / m - 1:+.1%}" for k, (p, m) in results.items()}))
    assert len(results) == len(cases)
    predicted, measured = results.pop("frozen_vision/False")
    assert 1.0 <= predicted / measured <= 1.2
    for case, (predicted, measured) in results.items():
        assert predicted == pytest.approx(measured, rel=0.10), case
    assert results["full/True"][0] != results["frozen_vision/True"][0]


SHARDED_CHECK = r"""
import json, sys
from pathlib import Path
import torch.distributed as dist
from training_core import engine
from training_core.estimate import trace
from training_core.estimate.trace import trace_step
from training_core.estimate.validate import measured_step_peak
from training_core.spec import RunSpec
recipe = engine.ds_config
def small_buckets(spec, world):  # the recipe's 5e8-element buckets would hide everything else in a tiny model
    config = recipe(spec, world)
    config["zero_optimization"].update(reduce_bucket_size=50_000, allgather_bucket_size=50_000)
    return config
engine.ds_config = trace.ds_config = small_buckets
out = {}
for fields in json.loads(sys.argv[2]):
    spec = RunSpec(model="tiny", num_crops=4, strategy="full", precision="fp32", **{"engine": "fsdp2", **fields})
    # first: joins the group, local rank 0 writes the twin; the smaller of two measurements (gloo's threads only add)
    measured = min(measured_step_peak(spec, Path(sys.argv[1])) for _ in range(2))
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, measured)
    out[json.dumps(fields, sort_keys=True)] = [trace_step(spec, Path(sys.argv[1]), block=1).peak_bytes, ranks]
if dist.get_rank() == 0:
    print(json.dumps(out), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_predictions_against_real_steps_on_two_ranks(tmp_path):
    """FSDP2 on 2 gloo ranks (torchrun): the fp32 shards, AdamW's moments of the trainable shards, every unit gathered
    from its forward to its backward, the fp32 gradient shards as the backward reduce-scatters them, against the
    allocator's peak of real steps on each rank. gloo's CPU collectives allocate their own buffers through torch's
    CPU allocator (NCCL keeps them outside it on a GPU; the estimate leaves them out), and when they come relative to
    the activations' peak depends on timing: the same checkpointed cell measured 3.0 to 3.3 MB over 3 runs x 2 ranks
    here. Measured over those 6 rank-runs: checkpointing all -12.5% .. +2.9%, none -8.5% .. +2.9%, accumulating 2
    -0.5% .. +1.0%; after AdamW's CPU temporaries were counted per shard (below), all -2.9% / -7.9%, none -1.4% / -1.4%,
    accumulating -2.9% / -12.0%. So the prediction must be above 0.85 x the smaller rank's peak (the gloo buffers are
    extra) and below 1.10 x the larger. Not gated: resharding (-10.1% on rank 0 in one run). One process is in
    `test_every_engine_against_real_steps_on_one_process` (it was 13-22% over while AdamW's single-tensor path on a CPU
    was counted over each group's flat shards, as DeepSpeed's flat partitions are: FSDP2 steps shard after shard).

    ZeRO-3 rides along (small reduce buckets, as in the one-process check): its partitions, the persistent parameters,
    the gradient partition and bucket, the reducing bucket's flat copy (and gloo's copy of it); accumulating 2 measured
    -3.9% / -9.8% (ranks 0 / 1) here, -8.4% / -2.7% and -18.0% / -9.7% in two later runs (rank 0's peak moved by 9%
    between runs of the same cell), checkpointing all at global batch 2 -7.5% / -0.6%. Later, 12 more runs of the
    accumulating cell (prediction 3.76 MB) measured 3.88 to 4.75 MB per rank: -3% .. -21%, the low end on a loaded
    machine (a fresh-clone CI run failed the 0.85 gate at 4.71 / 4.75 MB). Not the number of buckets in flight (with
    one 200,000-value bucket for all 174,880 gradients: 5.02 .. 6.31 MB against 5.36 predicted), not overlap_comm
    (off: 3.88 .. 4.68 MB), not Python's garbage collector (off: 4.05 .. 4.73 MB): gloo's threads, whose allocations
    the profiler counts in the rank's total. So ZeRO-3 on gloo is gated at [0.75 x the smaller rank's peak, 1.10 x the
    larger]: it still fails a prediction whose partitions are not divided by the world (fp32 partition, moments and
    gradient partition, 16 B x 87,440 values more: +1.4 MB, +37%); each term of ZeRO-3 is held to 10% by the
    one-process check.

    Each rank's peak is the smaller of two measurements of the same cell in the same process (gloo's threads only
    add to the peak): over 3 runs, two idle and one with both cores busy, FSDP2 measured -7.9% .. +6.7% (it had
    reached -10.9% with one measurement under load), ZeRO-3 -16.9% .. +3.1%; the test took 20-55 s, as with one
    measurement."""
    script = tmp_path / "sharded_check.py"
    script.write_text(SHARDED_CHECK)
    cases = [{"gpus_per_node": 2, "global_batch": 2},
             {"gpus_per_node": 2, "global_batch": 2, "gradient_checkpointing": False},
             {"gpus_per_node": 2, "global_batch": 4},
             {"gpus_per_node": 2, "global_batch": 4, "engine": "zero3"}]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path), json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({case: [f"{p / r - 1:+.1%}" for r in ranks] for case, (p, ranks) in results.items()}))
    for case, (predicted, ranks) in results.items():
        low = 0.75 if json.loads(case).get("engine") == "zero3" else 0.85  # gloo's own allocations: see above
        assert low * min(ranks) <= predicted <= 1.10 * max(ranks), (case, predicted, ranks)


def test_an_engine_the_estimator_does_not_cover_is_said_not_guessed(data, monkeypatch):
    from training_core.estimate import trace

    monkeypatch.setattr(trace, "ESTIMATED_ENGINES", ("ddp", "zero1", "zero2", "fsdp2"))
    with pytest.raises(NotEstimated, match="engine 'zero3' is not estimated yet"):
        trace_step(tiny(engine="zero3"), data, block=1)


def test_zero3_by_hand():
    """ZeRO-3 per rank on 8 ranks in bf16, DeepSpeed's defaults: a 400,000-value weight is partitioned (50,000 values
    per rank, 2 B each), its 1,000-value bias and the norm are persistent (whole on every rank); the live gathered
    parameters are all the non-persistent ones here (far under the reuse distance); master 4 B and moments 8 B per
    partitioned trainable value, the gradient partition and the contiguous-gradients bucket in bf16; reducing a bucket
    costs a flat copy of the gradients it holds (the bucket or all of them: 401,000 + 2,000 values x 2 B), twice on a
    CPU (gloo copies its input); the step one sub-group at a time."""
    from torch import nn

    from training_core.estimate.trace import adamw_step_temporaries, zero3_states, zero3_subgroups

    model = nn.Sequential(nn.Linear(400, 1000), nn.LayerNorm(1000))
    spec = RunSpec(model="tiny", strategy="full", precision="bf16", gpus_per_node=8, global_batch=64, gpu="H200")
    z = zero3_states(spec, model)
    parts = [50_000, 125, 125, 125]  # ceil(numel / 8): weight, bias, norm weight, norm bias
    assert z.partitions == rounded_(2 * sum(parts)) and z.persistent == rounded_(2 * 3_000)
    assert z.live == rounded_(2 * 400_000)
    trainable = sum(parts)
    assert (z.master, z.moments, z.grad_partition) == (rounded_(4 * trainable), 2 * rounded_(4 * trainable),
                                                       rounded_(2 * trainable))
    assert z.bucket == 2 * 500_000_000 and z.reducing == rounded_(2 * trainable * 8)
    decay = 50_000  # the weight; the bias and the norm take no weight decay
    assert z.step == rounded_(4 * decay) + adamw_step_temporaries([decay], True)
    on_cpu = zero3_states(spec.model_copy(update={"gpu": "cpu"}), model)
    assert on_cpu.reducing == 2 * z.reducing
    assert zero3_subgroups([[600, 500, 100], [30]], 1000) == [1100, 100, 30]  # cut where the total reaches 1000
    fp32 = zero3_states(spec.model_copy(update={"precision": "fp32"}), model)
    assert fp32.master == 0 and fp32.partitions == 2 * z.partitions  # an fp32 module is its own master


def rounded_(n: int) -> int:
    from training_core.estimate.tracker import rounded

    return rounded(n)


@pytest.mark.estimator
@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_the_wide_preset_within_10_percent_of_a_real_step(tmp_path_factory, strategy):
    """The real widths (decoder 3072 and its 32064-row vocabulary, CLIP 1024 on 336x336 crops) with 2 layers each:
    0.45B parameters, a real CPU step of 1-2.5 minutes. Measured here: LoRA +0.0% (ckpt) / +0.2% (no ckpt), QLoRA
    +0.2% / +0.3%, frozen_vision +4.7% / +6.7%, full +0.0% (the DeepSpeed ones take 2-7 minutes: in the note)."""
    data = tmp_path_factory.mktemp("wide")
    spec = RunSpec(model="wide-2l", precision="fp32", global_batch=1, num_crops=4, lora_rank=8, strategy=strategy,
                   attention="sdpa", gradient_checkpointing=True)
    predicted = trace_step(spec, data, block=1)
    measured = measured_step_peak(spec, data)
    assert predicted.peak_bytes > 10**9 and predicted.tokens > 500  # the real widths, not the tiny preset
    assert predicted.peak_bytes == pytest.approx(measured, rel=0.10), (predicted.peak_bytes, measured)


def test_fp16_with_its_grad_scaler_is_estimated(data):
    """V100 cells are fp16: the GradScaler's overflow check reads a value, which a fake tensor has not."""
    spec = tiny(strategy="lora", precision="fp16", attention="eager")
    predicted = trace_step(spec, data, block=1)
    assert predicted.phase in ("forward", "backward") and predicted.breakdown["optimizer states"] > 0
    assert predicted.peak_bytes == pytest.approx(measured_step_peak(spec, data), rel=0.10)  # +4.5% here


def test_accumulation_holds_the_first_micro_batchs_gradients_and_matches_the_allocator(data):
    """Issue 32, item 10: a cell that accumulates is traced over two micro-batches (the first's gradients are held
    through the second), and the CPU check runs the same two."""
    one = trace_step(tiny(strategy="lora"), data, block=1)
    two_spec = tiny(strategy="lora", global_batch=2)
    assert two_spec.grad_accum == 2
    two = trace_step(two_spec, data, block=1)
    assert two.peak_bytes >= one.peak_bytes
    assert two.peak_bytes == pytest.approx(measured_step_peak(two_spec, data), rel=0.10)


def test_ddp_buckets_are_the_gradients_from_the_start_on_more_than_one_rank(data):
    """world > 1: DDP with gradient_as_bucket_view holds one flat bucket of every trainable gradient from the moment
    the model is wrapped, so the gradients are in the forward's peak too (one rank traced; its batch is the same)."""
    alone = trace_step(tiny(strategy="lora", global_batch=1), data, block=1)
    ranks = trace_step(tiny(strategy="lora", gpus_per_node=2, global_batch=2), data, block=1)
    assert any("DDP's gradient buckets" in n for n in ranks.notes)
    # at the peak every trainable gradient is there (AdamW's two fp32 moments are twice their bytes); alone only the
    # ones produced so far in the backward
    every = ranks.breakdown["optimizer states"] / 2
    assert ranks.breakdown["gradients"] == pytest.approx(every, rel=0.02)
    assert alone.breakdown["gradients"] < 0.5 * every and ranks.peak_bytes > alone.peak_bytes


DDP_CHECK = r"""
import json
import torch
import torch.distributed as dist
from training_core.devices import Device
from training_core.engine import PlainEngine
from training_core.spec import RunSpec
from training_core.strategies import get_strategy
from training_core.strategies.base import build_base

dist.init_process_group("gloo")
spec = RunSpec(model="tiny", precision="fp32", num_crops=4, lora_rank=32, strategy="lora", gpus_per_node=2,
               global_batch=2)
model = get_strategy("lora").prepare(build_base(spec, torch.device("cpu"), torch.float32), spec)
trainable = [p for p in model.parameters() if p.requires_grad]
engine = PlainEngine(model, spec, Device("cpu", 0, "cpu", None, None), total_steps=1)
out = engine.model(input_ids=torch.randint(0, 100, (1, 8)), labels=torch.randint(0, 100, (1, 8))).loss
out.backward()  # text only: the vision tower's adapters get no gradient, their part of the bucket stays
grads = [p.grad for p in trainable if p.grad is not None]
buckets = {(g.untyped_storage().data_ptr(), g.untyped_storage().nbytes()) for g in grads}
mine = {"trainable_bytes": 4 * sum(p.numel() for p in trainable), "storages": len(buckets),
        "bucket_bytes": sum(n for _, n in buckets), "grads": len(grads)}
every = [None] * dist.get_world_size()
dist.all_gather_object(every, mine)
if dist.get_rank() == 0:  # one line from one rank: both ranks' output interleave on a shared stdout
    print(json.dumps(every), flush=True)
dist.barrier()
dist.destroy_process_group()  # a gloo group left to the interpreter's exit can abort a rank (std::terminate)
"""


@pytest.mark.slow
def test_ddp_keeps_the_gradients_in_its_buckets_as_the_estimator_counts_them(tmp_path):
    """Issue 32, item 10, checked on real DDP (2 gloo ranks under torchrun): with gradient_as_bucket_view every
    trainable gradient is a view into DDP's buckets, which hold exactly the trainable parameters' fp32 bytes: the
    term the trace adds for world > 1, and no second copy. (Each rank's whole allocator peak is not compared here:
    gloo's CPU all-reduce allocates its own buffers through torch's CPU allocator, 0.2-1.7 MB more on one rank than the
    other in a tiny cell, which NCCL on a GPU keeps outside torch's allocator.)"""
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_CHECK)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(ranks) == 2
    for result in ranks:
        assert result["bucket_bytes"] == pytest.approx(result["trainable_bytes"], rel=0.01)
        assert result["storages"] <= 4  # a few flat buckets (25 MB each at most), not one per parameter


def test_the_4bit_stand_in_matches_bitsandbytes_on_one_layer():
    """Issue 32, item 11: one Linear4bit (nf4, bf16 compute, loaded from fp32) against the estimator's stand-in, each
    run for real (forward under autocast from an fp32 input, backward) and measured by the CPU allocator: the output
    comes back in the input's dtype (fp32) and the backward dequantises to the load dtype before casting. Measured
    here: bitsandbytes 26.74 MB, the stand-in 27.17 MB (+1.6%); the stand-in before this issue 9.86 MB (-63%)."""
    import bitsandbytes as bnb
    from torch.profiler import ProfilerActivity, profile

    from training_core.estimate.trace import FourBitLinear
    from training_core.estimate.validate import STEPS, _allocation_peak

    k, n, m = 1024, 4096, 64
    torch.manual_seed(0)

    def peak(layer, x):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            torch.empty(1)
            with torch.profiler.record_function(STEPS):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = layer(x)
                out.float().sum().backward()
        return _allocation_peak(prof), out.dtype

    real = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    real.weight = bnb.nn.Params4bit(torch.randn(n, k), requires_grad=False, quant_type="nf4")
    real = real.to("cpu")  # quantised here, from fp32: its quant_state's dtype is the load dtype
    stand = FourBitLinear(torch.nn.Linear(k, n, bias=False), torch.bfloat16, torch.float32)
    stand.weight = torch.nn.Parameter(torch.zeros((n * k + 1) // 2, 1, dtype=torch.uint8), requires_grad=False)
    stand.absmax = torch.zeros(n * k // 64)
    x = torch.randn(m, k, requires_grad=True)
    (measured, real_dtype), (modelled, stand_dtype) = peak(real, x), peak(stand, x)
    assert real_dtype == stand_dtype == torch.float32
    assert modelled == pytest.approx(measured, rel=0.05)


def test_a_throughput_cells_batch_is_the_longest_of_its_measured_window(tmp_path):
    """Issue 32, item 12: the window's peak is set by the longest micro-batch the window trains on; a longer example
    the warm-up took is not in it. Checked against the cell's own loader (inputs.MicroBatches) over several seeds, at
    least one of which puts the twin's longest example in the warm-up."""
    from training_core import inputs
    from training_core.estimate.trace import longest_batch
    from training_core.strategies.base import model_config
    from training_core.tasks import get_task

    differed = 0
    for seed in range(6):
        spec = tiny(strategy="lora", warmup_steps=3, measured_steps=2, seed=seed)
        data = tmp_path / f"s{seed}"
        batch, examples = longest_batch(spec, data)
        config = model_config(spec)
        train, _ = inputs.records(spec, data)
        loader = inputs.MicroBatches(train, get_task(spec.task), inputs.build_processor(spec, config), spec)
        steps = [[b["input_ids"].shape[1] for b in group] for _, group in zip(range(5), loader.steps(), strict=False)]
        window = max(n for group in steps[spec.warmup_steps:] for n in group)
        assert batch["input_ids"].shape[1] == window, (seed, steps)
        differed += window < max(n for group in steps for n in group)
    assert differed  # the warm-up held the longest example for some seed: the old choice would have overestimated


@pytest.mark.parametrize("n, world, batch, accum, warmup, measured", [
    (40, 1, 1, 1, 3, 2), (40, 2, 2, 3, 5, 1), (33, 4, 1, 2, 7, 3), (40, 2, 1, 1, 1, 30)])
def test_the_window_is_found_without_walking_the_warm_up(n, world, batch, accum, warmup, measured):
    """measured_examples jumps to the window's epoch and offset (a cell of global batch 10^8 walked 10^8 micro-batches
    for 160 s): the same examples as walking the sampler from the start; a window of a whole epoch is every example."""
    import itertools

    from training_core import inputs
    from training_core.estimate.trace import measured_examples

    spec = tiny(strategy="lora", gpus_per_node=world, per_device_batch=batch,
                global_batch=world * batch * accum, warmup_steps=warmup, measured_steps=measured)
    walked = set()
    for rank in range(world):
        batches = inputs.EpochBatches(range(n), batch, world, rank, spec.seed)
        for micro in itertools.islice(iter(batches), warmup * accum, (warmup + measured) * accum):
            walked.update(i for _, i in micro)
    found = measured_examples(spec, n)
    assert found == walked or (found is None and measured * accum >= (n // world) // batch)
