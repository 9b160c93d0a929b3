"""A run's data: the records for the spec (synthetic twin, the recipe's HF dataset, or a path), the processor, and
deterministic micro-batches that can resume mid-epoch."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler, Sampler

from . import distributed
from .data.collate import TrainCollator
from .data.datasets import TrainDataset
from .data.records import Record
from .data.sources import find_jsonl, load_records
from .data.synth import synthesize
from .model import Phi3VProcessor, build_tiny_tokenizer
from .model.image_processing import Phi3VImageProcessor
from .model.presets import PRESETS
from .spec import RunSpec
from .tasks import TaskSpec, get_task


def build_processor(spec: RunSpec, config) -> Phi3VProcessor:
    """The checkpoint's own tokenizer when the model is a directory; else the byte-level tokenizer (presets without a
    checkpoint: text is then counted in bytes, a little longer than the real tokenizer's, see README)."""
    crops = spec.num_crops or get_task(spec.task).num_crops
    if spec.model not in PRESETS:
        return Phi3VProcessor.from_pretrained(spec.model, num_crops=crops)
    image = Phi3VImageProcessor(num_crops=crops, crop_size=config.crop_size, patch_size=config.patch_size)
    return Phi3VProcessor(build_tiny_tokenizer(), image)


MAX_TWIN_TRAIN = 1024  # a long throughput cell cycles through this many twin examples instead of writing more


def needed_train_examples(spec: RunSpec) -> int:
    """Twin examples to write: what the steps consume, at most MAX_TWIN_TRAIN (the loader cycles through epochs),
    at least one global batch; `synthetic_train` sets it."""
    if spec.synthetic_train:
        return spec.synthetic_train
    steps = spec.max_steps or (spec.warmup_steps + spec.measured_steps)
    wanted = min(spec.global_batch * steps, MAX_TWIN_TRAIN) if spec.mode == "throughput" else 200
    return max(wanted, spec.global_batch)


def records(spec: RunSpec, out_dir: Path) -> tuple[Sequence[Record], Sequence[Record] | None]:
    task = get_task(spec.task)
    want_eval = spec.mode == "accuracy"
    if spec.data == "synthetic":
        # one copy per node (nodes need not share a file system): the node's local rank 0 writes it
        node = int(os.environ.get("GROUP_RANK", "0"))
        directory = out_dir / ("data" if spec.nodes == 1 else f"data-node{node}")
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and find_jsonl(task, "train", directory) is None:
            synthesize(spec.task, directory, n_train=needed_train_examples(spec),  # the cell's own twin: a
                       n_eval=spec.synthetic_eval if want_eval else 1, seed=spec.seed, overwrite=True)  # torn one goes
        distributed.barrier()
        source = directory
    else:
        source = None if spec.data == "hf" else Path(spec.data)
    train = load_records(task, "train", source, num_crops=spec.num_crops)
    evals = load_records(task, "eval", source, limit=spec.eval_limit, num_crops=spec.num_crops) if want_eval else None
    return train, evals


RECIPE_LOADER_WORKERS = 4  # the recipe's dataloader_num_workers, per GPU process


@dataclass(frozen=True)
class LoaderSettings:
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None
    wanted_workers: int | None = None  # set when /dev/shm held fewer workers than wanted
    note: str | None = None


PREFETCH = 2  # DataLoader's default prefetch_factor


def loader_settings(spec: RunSpec, device_type: str, shm: int | None | str = "measure") -> LoaderSettings:
    """The recipe's loader on CUDA (4 worker processes per rank, pinned memory, workers kept across epochs); on a
    CPU 0 workers (the loader's processes would share the training cores; measured on a 2-core machine, 2 workers
    were ~9% faster for the tiny preset, see README). `dataloader_workers` in the spec (or a grid) overrides it.
    The recipe's count is lowered to what /dev/shm holds (`shm`: its size; measured by default): a container's 64 MB
    killed the first step with a bus error (training_core/shm.py)."""
    from training_core import shm as shared
    from training_core.tasks import get_task

    on_cuda = device_type == "cuda"
    workers = spec.dataloader_workers if spec.dataloader_workers is not None else (
        RECIPE_LOADER_WORKERS if on_cuda else 0)
    wanted, note = None, None
    if workers and spec.dataloader_workers is None:
        size = shared.shm_total() if shm == "measure" else shm
        batch = shared.batch_bytes(spec.per_device_batch, spec.num_crops or get_task(spec.task).num_crops)
        fits = shared.workers_that_fit(workers, PREFETCH, batch, spec.gpus_per_node, size)
        if fits < workers:
            need = shared.loader_need(workers, PREFETCH, batch, spec.gpus_per_node)
            wanted, note = workers, (f"loader: {fits} worker(s) per rank instead of the recipe's {workers}: "
                                     f"{shared.advice(size, need)}")
            workers = fits
    return LoaderSettings(num_workers=workers, pin_memory=on_cuda, persistent_workers=workers > 0,
                          prefetch_factor=PREFETCH if workers else None, wanted_workers=wanted, note=note)


class EpochBatches(Sampler):
    """Per-rank batches of (epoch, index), epoch after epoch without end: in each epoch the order of a
    `DistributedSampler` (shuffled by seed + epoch, the tail dropped), cut into `batch_size` batches (a partial last
    one dropped). Starts at `epoch` after `consumed` batches of it, so a resumed run sees the same batches."""

    def __init__(self, dataset, batch_size: int, num_replicas: int, rank: int, seed: int, epoch: int = 0,
                 consumed: int = 0):
        self.sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.batch_size, self.epoch, self.consumed = batch_size, epoch, consumed

    @property
    def per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.epoch, self.consumed
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(skip, self.per_epoch):
                yield [(epoch, i) for i in indices[b * self.batch_size:(b + 1) * self.batch_size]]
            epoch, skip = epoch + 1, 0


class MicroBatches:
    """Per-rank micro-batches in a fixed order per (seed, epoch), as a distributed sampler gives them, from one
    DataLoader for the whole run (its workers live across epochs); the position (epoch, micro-batches used in it)
    is saved in checkpoints and restored on resume."""

    def __init__(self, train: Sequence[Record], task: TaskSpec, processor, spec: RunSpec,
                 settings: LoaderSettings | None = None, epoch: int = 0, consumed: int = 0):
        self.dataset = TrainDataset(train, task, processor, seed=spec.seed, ablation=spec.image_ablation)
        self.spec = spec
        self.settings = settings or loader_settings(spec, "cpu")
        self.collate = TrainCollator(processor.tokenizer.pad_token_id, task.keep_attention_mask)
        self.epoch, self.consumed = epoch, consumed
        self.loader: DataLoader | None = None
        self.per_epoch = self._sampler().per_epoch
        if self.per_epoch < spec.grad_accum:
            raise ValueError(
                f"the training set has {len(train)} examples: too few for one optimizer step of global batch "
                f"{spec.global_batch} on {distributed.world_size()} process(es)"
            )

    def _sampler(self) -> EpochBatches:
        return EpochBatches(self.dataset, self.spec.per_device_batch, distributed.world_size(), distributed.rank(),
                            self.spec.seed, self.epoch, self.consumed)

    def position(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def __iter__(self) -> Iterator[dict]:
        s = self.settings
        self.loader = DataLoader(self.dataset, batch_sampler=self._sampler(), collate_fn=self.collate,
                                 num_workers=s.num_workers, pin_memory=s.pin_memory,
                                 persistent_workers=s.persistent_workers, prefetch_factor=s.prefetch_factor)
        for batch in self.loader:
            self.consumed += 1
            if self.consumed == self.per_epoch:
                self.epoch, self.consumed = self.epoch + 1, 0
            yield batch

    def steps(self) -> Iterator[list[dict]]:
        """Groups of `grad_accum` micro-batches, one per optimizer step."""
        group = []
        for batch in self:
            group.append(batch)
            if len(group) == self.spec.grad_accum:
                yield group
                group = []
