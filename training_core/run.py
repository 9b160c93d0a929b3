"""One benchmark cell: `torchrun ... -m training_core.run --spec SPEC.json --out DIR [--resume]`.

Builds the model, data and strategy the spec describes, trains (throughput: warm-up + measured optimizer steps;
accuracy: the configured epochs with evaluation before and after), and writes exactly one `DIR/result.json` from
rank 0, atomically. Unsupported combinations, OOM and errors are results too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import psutil
import torch

from . import checkpoint, communication, distributed, inputs, nccl, rank_failures
from .capabilities import unsupported_reason
from .devices import Device, current_device
from .engine import build_engine
from .env import capture
from .evaluate import evaluate
from .export import BASE_DIR, MODEL_DIR, is_adapter, save_adapter, save_model_dir
from .precision import weights_dtype
from .result import RESULT_FILE, Diverged, Outcome, build_row, classify_exception, write_json_atomic
from .spec import RunSpec, SpecError
from .strategies import get_strategy
from .strategies.base import build_base, count_parameters, enable_checkpointing, freeze_never_used, model_config
from .strategies.lora import qlora_quantization
from .tasks import get_task
from .trackers.energy import EnergyTracker
from .trackers.flops import executed_flops, mfu, model_shape, no_peak_reason, peak_flops, trainable_for, training_flops
from .trackers.gradients import GradientCoverage
from .trackers.memory import MemoryTracker, model_state_bytes
from .trackers.steps import StepLog
from .trackers.throughput import ThroughputTracker


class StopRequested(Exception):
    """--stop-after: end as if the job had been killed after that optimizer step (tests of resume)."""


class UntrainedParameters(Exception):
    """`require_gradients: true` and trainable parameters got no gradient in the first optimizer step."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training_core.run", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="RunSpec JSON file")
    parser.add_argument("--out", required=True, type=Path, help="output directory (result.json, checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--save-model", action="store_true",
                        help="keep the trained model (or adapter) in --out/model, in the official / peft layout")
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def total_steps(spec: RunSpec, per_epoch_micro: int) -> int:
    if spec.max_steps:
        return spec.max_steps
    if spec.mode == "throughput":
        return spec.warmup_steps + spec.measured_steps
    return max(1, math.ceil(spec.epochs * max(per_epoch_micro // spec.grad_accum, 1)))


class Cell:
    """The parts of one run, built once, trained, evaluated, measured."""

    def __init__(self, spec: RunSpec, device: Device, out: Path, outcome: Outcome, args, process_start: float):
        self.spec, self.device, self.out, self.outcome, self.args = spec, device, out, outcome, args
        self.process_start = process_start
        self.task = get_task(spec.task)
        self.strategy = get_strategy(spec.strategy)

    # ---------------------------------------------------------------- build
    def build(self) -> None:
        spec, device = self.spec, self.device
        seed_everything(spec.seed)
        self.config = model_config(spec)
        self.shape = model_shape(self.config.to_dict())  # the FLOPs model's sizes
        self.processor = inputs.build_processor(spec, self.config)
        self.train_records, self.eval_records = inputs.records(spec, self.out)
        quantization = qlora_quantization(spec, self.config) if self.strategy.quantized else None
        keep_random = None
        if self.args.save_model and is_adapter(spec) and spec.weights == "random" and distributed.is_main():
            keep_random = self.out / MODEL_DIR / BASE_DIR  # nothing else could rebuild this base later
        model = build_base(spec, device.torch, weights_dtype(spec), quantization, keep_random=keep_random,
                           scratch=self.out)
        model = self.strategy.prepare(model, spec)
        if spec.train_engine in ("ddp", "fsdp2"):
            freeze_never_used(model)
        enable_checkpointing(model, spec)
        model.config.use_cache = False  # training; generation asks for the cache explicitly
        model.train()
        trainable, total = count_parameters(model)
        self.outcome.metrics.update({"trainable_params": trainable, "total_params": total,
                                     "comm_bytes_per_step": communication.step_bytes(spec, trainable, total)})
        loader = inputs.loader_settings(spec, device.type)
        self.outcome.metrics.update({"dataloader_workers": loader.num_workers, "pin_memory": loader.pin_memory})
        if loader.note is not None:  # /dev/shm too small for the recipe's workers: fewer, said, instead of a bus error
            self.outcome.metrics["dataloader_workers_wanted"] = loader.wanted_workers
            if distributed.is_main():
                print(f"warning: {loader.note}", file=sys.stderr)
        self.batches = inputs.MicroBatches(self.train_records, self.task, self.processor, spec, loader)
        self.total_steps = total_steps(spec, self.batches.per_epoch)
        self.engine = build_engine(spec, model, device, self.total_steps)
        self.start_step = 0
        position, skipped = (checkpoint.resume(self.engine, self.out, spec.run_id, self.total_steps, device.torch)
                             if self.args.resume else (None, []))
        if skipped:
            self.outcome.metrics["resume_skipped_checkpoints"] = len(skipped)
        if position is not None:
            self.start_step = position["step"]
            self.batches.epoch, self.batches.consumed = position["epoch"], position["consumed"]
            self.outcome.series = {**self.outcome.series, **position["series"]}
            self.outcome.metrics.update(position.get("metrics_before", {}))
            self.outcome.metrics["resumed_from_step"] = self.start_step

    # ---------------------------------------------------------------- eval
    def evaluate(self, when: str) -> None:
        started = time.monotonic()
        self.engine.generation_model().longrope_generation = self.spec.longrope_generation or "official"
        metrics, predictions = evaluate(
            self.engine.generation_model(), self.eval_records, self.task, self.processor,
            batch_size=self.spec.eval_batch, max_new_tokens=self.spec.max_new_tokens, device=self.device.torch,
            context=self.engine.generation_context(), ablation=self.spec.image_ablation,
        )
        suffix = "_before" if when == "before" else ""
        self.outcome.metrics.update({f"{k}{suffix}": v for k, v in metrics.items()})
        self.outcome.metrics[f"eval_{when}_s"] = round(time.monotonic() - started, 3)
        if distributed.is_main():
            write_json_atomic(self.out / f"eval_{when}.json", {"metrics": metrics, "predictions": predictions})

    # ---------------------------------------------------------------- train
    def _step_counts(self, micro: list[dict]) -> tuple[int, int, int, float]:
        images = sum(b["num_images"] for b in micro)
        tokens = sum(sum(b["lengths"]) for b in micro)
        samples = sum(len(b["lengths"]) for b in micro)
        trainable = trainable_for(self.spec.strategy, self.spec.vision_frozen, self.spec.recipe_revision,
                                  self.spec.checkpointing)
        flops = executed = 0.0
        for b in micro:
            crops = b["pixel_values"].shape[0] * b["pixel_values"].shape[1] if "pixel_values" in b else 0
            image_tokens = int((b["input_ids"] < 0).sum())
            flops += training_flops(self.shape, b["lengths"], crops, image_tokens, trainable)
            executed += executed_flops(self.shape, b["lengths"], crops, image_tokens, trainable)
        return images, tokens, samples, (flops, executed)

    def train(self) -> None:
        spec, outcome = self.spec, self.outcome
        reduce_on = distributed.reduce_device(self.device.type)
        sum_all = lambda v: distributed.sum_all(v, reduce_on)  # noqa: E731
        max_all = lambda v: distributed.max_all(v, reduce_on)  # noqa: E731
        min_all = lambda v: distributed.min_all(v, reduce_on)  # noqa: E731
        window_flops = []
        skipped_steps = [0, 0]  # optimizer steps the fp16 loss scaler skipped: in all, in the measured window
        outcome.metrics["time_to_first_step_s"] = round(time.time() - self.process_start, 3)
        tracker = ThroughputTracker(spec.warmup_steps, sync=self.device.synchronize,
                                    cpu_clock=time.thread_time if self.device.type == "cpu" else None)
        steps = StepLog(self.out, distributed.is_main(), distributed.world_size(), resumed=self.start_step > 0)
        with MemoryTracker(self.device) as memory, EnergyTracker(self.device) as energy, steps:
            tracker.on_window_start += [memory.start_window, energy.start_window]
            with tracker:
                for step in range(self.start_step, self.total_steps):
                    asked = time.perf_counter()
                    micro = next(self._step_groups)
                    data_wait = time.perf_counter() - asked
                    coverage = self._gradient_coverage() if step == self.start_step else None
                    skipped_before = self.engine.skipped_steps
                    try:
                        loss = self.engine.train_step(micro)
                    finally:
                        if coverage is not None:
                            coverage.remove()
                    if coverage is not None:
                        self._check_gradients(coverage)
                    skipped = self.engine.skipped_steps > skipped_before
                    # the optimizer's states exist only after a step that was taken: a skipped fp16 step has none yet
                    if "model_state_bytes" not in outcome.metrics and not max_all(float(skipped)):
                        outcome.metrics["model_state_bytes"] = int(max_all(
                            model_state_bytes(self.engine.module, self.engine.optimizer)))
                    images, tokens, samples, flops = self._step_counts(micro)
                    tracker.step(images, tokens, samples, data_wait)
                    skipped_steps[0] += skipped
                    if len(tracker.steps) > spec.warmup_steps:
                        skipped_steps[1] += skipped
                    if len(tracker.steps) > spec.warmup_steps:
                        window_flops.append(flops)
                    value = sum_all(loss) / distributed.world_size()  # the same on every rank
                    outcome.series["loss"].append(value)
                    if not math.isfinite(value):
                        raise Diverged(step + 1, value)
                    outcome.series["step_time_s"].append(tracker.steps[-1].seconds)
                    outcome.series["data_wait_s"].append(data_wait)
                    done = tracker.steps[-1]
                    steps.write(step + 1, value, done.seconds, done.images, done.tokens, data_wait,
                                self._allocated(), self._learning_rate())
                    self._after_step(step + 1, tracker)
        outcome.metrics.update(tracker.metrics(distributed.world_size(), sum_all, max_all))
        outcome.metrics.update(memory.metrics(max_all, min_all))
        images_total = sum_all(sum(s.images for s in tracker.measured))
        samples_total = sum_all(sum(s.samples for s in tracker.measured))
        outcome.metrics.update(energy.metrics(images_total, sum_all, min_all))
        self._flops_metrics(sum_all(sum(f for f, _ in window_flops)), sum_all(sum(e for _, e in window_flops)),
                            samples_total)
        if spec.precision == "fp16":  # the loss scaler's skipped steps: counted, said in the report
            outcome.metrics["skipped_steps"], outcome.metrics["skipped_steps_measured"] = skipped_steps
            if "model_state_bytes" not in outcome.metrics:
                outcome.unmeasured["model_state_bytes"] = ("every optimizer step was skipped by the fp16 loss scaler: "
                                                           "the optimizer's states never existed")
        outcome.metrics["loss_first"] = outcome.series["loss"][0] if outcome.series["loss"] else None
        outcome.metrics["loss_last"] = outcome.series["loss"][-1] if outcome.series["loss"] else None

    def _allocated(self) -> int | None:
        """Bytes torch's CUDA allocator holds for tensors now (the per-step log's); None on a CPU."""
        return torch.cuda.memory_allocated(self.device.index) if self.device.type == "cuda" else None

    def _learning_rate(self) -> float | None:
        """The first parameter group's learning rate after this step's scheduler step (the per-step log's)."""
        groups = getattr(getattr(self.engine, "optimizer", None), "param_groups", None)
        return float(groups[0]["lr"]) if groups else None

    def _gradient_coverage(self) -> GradientCoverage:
        module = self.engine.module
        unused = module.unused_parameter_names() if hasattr(module, "unused_parameter_names") else ()
        # FSDP2: the reduced gradient shards, read before the optimizer step
        return GradientCoverage(module, unused, before_step=getattr(self.engine, "before_optimizer_step", None))

    def _check_gradients(self, coverage: GradientCoverage) -> None:
        """After the first optimizer step: record which trainable parameters got no gradient; with
        `require_gradients`, such a cell is an error."""
        report = coverage.finish(distributed.gather_objects)
        self.outcome.gradients = report
        self.outcome.metrics["untrained_params"] = report["untrained_params"]
        if report["flag"]:
            print(f"[rank {distributed.rank()}] warning: {report['flag']} ("
                  + ", ".join(f"{g}: {n}" for g, n in {**report["no_gradient"], **report["zero_gradient"]}.items())
                  + ")", file=sys.stderr)
            if self.spec.require_gradients:
                raise UntrainedParameters(report["flag"] + " (require_gradients: true)")

    def _after_step(self, done: int, tracker: ThroughputTracker) -> None:
        every = self.spec.checkpoint_every
        if every and done % every == 0 and done < self.total_steps:
            position = {"step": done, **self.batches.position(), "series": self.outcome.series,
                        "metrics_before": {k: v for k, v in self.outcome.metrics.items() if k.endswith("_before")}}
            with tracker.excluded():  # a save inside the measured window is no training time (issue 32, item 12)
                checkpoint.save(self.engine, self.out, done, position, self.spec.run_id)
        if self.args.stop_after and done == self.args.stop_after:
            raise StopRequested(f"stopped after optimizer step {done} (--stop-after)")

    def _flops_metrics(self, flops_total: float, executed_total: float, samples_total: float) -> None:
        """Model FLOPs (MFU's numerator: no recompute) and executed FLOPs (what the cell's activation checkpointing
        recomputes added: none for `none`, every K-th layer's forward for `every-K`)."""
        metrics = self.outcome.metrics
        wall = metrics.get("measured_wall_s")
        if not wall or not metrics.get("measured_steps"):
            return
        metrics["model_flops_per_s"] = flops_total / wall
        metrics["executed_flops_per_s"] = executed_total / wall
        metrics["flops_per_sample"] = flops_total / max(samples_total, 1)
        if self.spec.strategy == "qlora":
            return  # 4-bit dequantisation work makes an MFU figure meaningless
        if self.device.type != "cuda":
            return  # peak FLOP/s are GPU data-sheet figures
        reason = no_peak_reason(self.device.name, self.spec.precision)
        if reason is not None:
            self.outcome.unmeasured["mfu"] = reason  # said in the row and the report, not silently missing
            return
        peak = peak_flops(self.device.name, self.spec.precision)
        metrics["mfu"] = mfu(flops_total, wall, distributed.world_size(), peak)
        metrics["hfu"] = mfu(executed_total, wall, distributed.world_size(), peak)  # hardware FLOPs utilisation

    def run(self) -> None:
        self.build()
        self._step_groups = self.batches.steps()
        if self.spec.mode == "accuracy" and self.start_step == 0:
            self.evaluate("before")
        self.train()
        if self.spec.mode == "accuracy":
            self.evaluate("after")
        if self.args.save_model:
            self.save_model()

    def save_model(self) -> None:
        """The trained model (full / frozen_vision) or adapter (lora / qlora) in `--out/model`, written by the main
        rank from the engine's whole state (ZeRO-3 and FSDP2 gather their shards first: every rank takes part)."""
        directory = self.out / MODEL_DIR
        with self.engine.full_state() as state:
            if distributed.is_main():
                module = self.engine.module
                if is_adapter(self.spec):
                    base = directory / BASE_DIR if self.spec.weights == "random" else Path(self.spec.model).resolve()
                    save_adapter(module, self.spec, self.processor, directory, base=str(base.resolve()), state=state)
                else:
                    save_model_dir(module, self.processor, directory, state=state)
                self.outcome.artifacts["model"] = str(directory)
        distributed.barrier()


def _world_mismatch(spec: RunSpec) -> str | None:
    if spec.world_size != distributed.world_size():
        return (f"the spec is for {spec.world_size} process(es) (nodes x gpus_per_node) but "
                f"{distributed.world_size()} were started; launch with torchrun --nproc_per_node={spec.gpus_per_node}")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    process_start = psutil.Process().create_time()
    main_start = time.time()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers fork after the tokenizer was used
    args.out.mkdir(parents=True, exist_ok=True)
    outcome = Outcome()
    outcome.metrics["time_to_main_s"] = round(main_start - process_start, 3)  # interpreter start + imports
    try:
        spec = RunSpec.load(args.spec)
    except SpecError as exc:
        outcome.status, outcome.reason = "error", str(exc)
        raw = _raw_spec(args.spec)
        write_json_atomic(args.out / RESULT_FILE, build_row(run_id=None, spec=raw, outcome=outcome, env=capture(1),
                                                            process_start=process_start))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = current_device(spec.gpu)  # a cpu cell runs on the CPU even where CUDA is
    if spec.cpu_threads is not None:
        torch.set_num_threads(spec.cpu_threads)
    # NCCL names the network it chose only in its log: asked for before its first communicator (training_core/nccl.py)
    nccl_set = nccl.prepare(args.out) if nccl.wanted(device.type, int(os.environ.get("WORLD_SIZE", "1"))) else None
    distributed.init(device.type, always=spec.train_engine != "ddp")  # DeepSpeed and FSDP2 need a group, even of one
    rank_failures.clear(args.out, distributed.rank())  # an earlier run's record is not this run's
    _record_host(args.out)
    reason = unsupported_reason(spec, device)
    if reason:
        outcome.status, outcome.reason = "unsupported", reason
    elif (mismatch := _world_mismatch(spec)) is not None:
        outcome.status, outcome.reason = "error", mismatch
    else:
        try:
            Cell(spec, device, args.out, outcome, args, process_start).run()
        except (StopRequested, KeyboardInterrupt) as exc:
            outcome.status, outcome.reason = "interrupted", str(exc) or "interrupted"
        except Diverged as exc:
            outcome.status, outcome.reason = "diverged", str(exc)
        except UntrainedParameters as exc:
            outcome.status, outcome.reason = "error", str(exc)
        except Exception as exc:  # a failure is a result: keep what was measured
            outcome.status, outcome.reason = classify_exception(exc)
            traceback.print_exc()
    failed = outcome.status not in ("ok", "unsupported")
    world = distributed.world_size()
    if failed and world > 1:  # this rank's own error, first, so that a peer's symptom is never taken for the cause
        rank_failures.record(args.out, distributed.rank(), outcome.status, outcome.reason)
    env = capture(world)
    env["hosts"] = _hosts(args.out)
    env["engine"] = communication.describe(spec)
    if nccl_set is not None:
        env["nccl"] = nccl.describe(args.out, nccl_set, log=args.out / "log.txt")
    if failed and world > 1 and distributed.is_main():
        cause = rank_failures.first_cause(args.out, since=process_start - 60)
        if cause is not None and cause["rank"] != distributed.rank():
            outcome.status = cause["status"]
            outcome.reason = f"{rank_failures.described(cause)} (rank 0 then: {outcome.reason})"
    row = build_row(run_id=spec.run_id, spec=spec.model_dump(mode="json"), outcome=outcome, env=env,
                    process_start=process_start)
    if distributed.is_main():
        write_json_atomic(args.out / RESULT_FILE, row)
    print(f"[rank {distributed.rank()}] {outcome.status}" + (f": {outcome.reason}" if outcome.reason else ""),
          file=sys.stderr)
    if failed and world > 1:
        # no destroy_process_group(): it waits on peers that sit in a collective for this rank (30-60 min under
        # NCCL); exiting now makes torchrun stop them in seconds (torchtitan's fix of the same deadlock, PR 1342)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    distributed.shutdown()
    return 0 if not failed else 1


HOSTS_DIR = "ranks"  # every rank's host, written at start: no collective needed to list them at the end


def _record_host(out: Path) -> None:
    write_json_atomic(out / HOSTS_DIR / f"rank{distributed.rank()}.json",
                      {"rank": distributed.rank(), "hostname": socket.gethostname(),
                       "cpus_allowed": len(os.sched_getaffinity(0)),  # the CPUs this rank may run on
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})  # as the launcher set it, if it did


def _hosts(out: Path) -> list[dict]:
    """The hosts of this run's ranks (those whose record this node can see: a shared file system shows all)."""
    records = []
    for path in sorted((out / HOSTS_DIR).glob("rank*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda r: r.get("rank", 0))


def _raw_spec(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
