"""Cells of the tiny preset on several engines in one torchrun process group (the equivalence tests of issue 33):
`python -m torch.distributed.run --nproc_per_node=2 tests/core/engine_cells.py CASES.json OUT_DIR`.

Each case is a dict of spec fields plus `_resume_after` (stop after that optimizer step, then resume into a fresh
cell: checkpoint + resume) and `_export` (keep the trained model: the official layout from every engine). Every case
runs the real cell (`training_core.run.Cell`); rank 0 prints one JSON line with, per case, the loss series, the
metrics, the gradient coverage and, for exports, each saved tensor's shape and sum."""

import json
import sys
import time
import types
from pathlib import Path

import torch
import torch.distributed as dist

from training_core import distributed
from training_core.devices import Device
from training_core.result import Outcome
from training_core.run import Cell, StopRequested
from training_core.spec import RunSpec

BASE = dict(model="tiny", num_crops=4, lora_rank=4, gpus_per_node=2, global_batch=8, per_device_batch=2,
            warmup_steps=1, measured_steps=2, lr=1e-3, lr_warmup_steps=0, synthetic_train=24, cpu_threads=1)


def run(spec: RunSpec, out: Path, resume=False, stop_after=None, save_model=False) -> Outcome:
    outcome = Outcome()
    args = types.SimpleNamespace(resume=resume, stop_after=stop_after, save_model=save_model)
    cell = Cell(spec, Device("cpu", 0, "cpu", None, None), out, outcome, args, time.time())
    try:
        cell.run()
    except StopRequested:
        pass
    del cell
    return outcome


def exported(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return {k: [list(v.shape), float(v.double().sum())] for k, v in tensors.items()}


def main() -> None:
    cases, root = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    distributed.init("cpu", always=True)
    results = []
    for index, case in enumerate(cases):
        fields = {k: v for k, v in case.items() if not k.startswith("_")}
        spec = RunSpec.parse({**BASE, **fields})
        out = root / f"case{index}"
        if case.get("_resume_after"):
            stopped = run(spec.model_copy(update={"checkpoint_every": 1}), out, stop_after=case["_resume_after"])
            outcome = run(spec.model_copy(update={"checkpoint_every": 1}), out, resume=True)
            result = {"stopped_loss": stopped.series["loss"]}
        else:
            outcome = run(spec, out, save_model=bool(case.get("_export")))
            result = {}
        result.update({"case": case, "loss": outcome.series["loss"], "gradients": outcome.gradients,
                       "metrics": {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}})
        if case.get("_export") and distributed.is_main():
            result["export"] = exported(out / "model")
        results.append(result)
        dist.barrier()
    if distributed.is_main():
        print("ENGINE-CELLS " + json.dumps(results), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
