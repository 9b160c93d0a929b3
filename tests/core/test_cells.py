"""End-to-end cells of the tiny preset, as the matrix runner launches them (subprocess; torchrun with 2 processes
on gloo, `full` and `frozen_vision` through DeepSpeed ZeRO-2)."""

import json
import subprocess
import sys

import pytest
import torch

from training_core.result import classify_exception
from training_core.spec import RunSpec

from .cells import env_with_fake_cuda, run_cell, run_spec_file
from .test_strategies import EMBED, LANGUAGE_TARGETS, TOTAL, VISION, VISION_TARGETS, lora_size

ROW_KEYS = {"run_id", "matrix", "status", "reason", "spec", "metrics", "series", "env", "started_at", "finished_at",
            "wall_s", "log", "gradients"}
LORA_TRAINABLE = lora_size(4, LANGUAGE_TARGETS + VISION_TARGETS)
TRAINABLE = {"full": TOTAL, "frozen_vision": TOTAL - VISION - EMBED, "lora": LORA_TRAINABLE, "qlora": LORA_TRAINABLE}


@pytest.mark.parametrize(("strategy", "precision"), [("full", "fp32"), ("frozen_vision", "bf16"), ("qlora", "bf16")])
@pytest.mark.slow
def test_cells_through_the_entry_point_under_torchrun(tmp_path, strategy, precision):
    """The cell's entry point (`torchrun -m training_core.run`), as the runner launches it, for three strategy x
    precision pairs; the other pairs (full bf16, frozen_vision fp32, lora fp32 and bf16, qlora fp32) run as real
    cells in the engines' one process group (tests/core/test_engines.py: their loss sequence, trainable parameters and
    gradient coverage), which saves five torchrun launches (~45 s each) of `make test`."""
    result = run_cell(tmp_path, nproc=2, strategy=strategy, precision=precision)
    assert result["status"] == "ok", result["reason"] + result["_stderr"][-3000:]
    assert set(result) - {"_returncode", "_stderr"} == ROW_KEYS
    spec = RunSpec.parse(result["spec"])
    assert result["run_id"] == spec.run_id and result["env"]["world_size"] == 2
    m = result["metrics"]
    assert (m["warmup_steps"], m["measured_steps"]) == (2, 3) and len(result["series"]["loss"]) == 5
    assert m["trainable_params"] == TRAINABLE[strategy]
    # today's recipe: every trainable parameter the forward uses got a gradient on the 2 ranks
    assert result["gradients"]["flag"] is None and m["untrained_params"] == 0
    assert result["gradients"]["trainable_params"] == TRAINABLE[strategy]
    if strategy in ("full", "frozen_vision"):  # DeepSpeed ZeRO-2 on 2 ranks, each tensor counted once:
        weight_bytes = 4 if precision == "fp32" else 2  # every weight on every rank; fp32 master + Adam's two
        # moments partitioned over the ranks; AdamW's scalar step, one per parameter group (decay, no decay)
        assert m["model_state_bytes"] == TOTAL * weight_bytes + (4 + 8) * TRAINABLE[strategy] // 2 + 4 * 2
    if strategy == "qlora":  # random weights written once (local rank 0), loaded 4-bit by both ranks, then removed
        assert result["_stderr"].count("wrote the random base for 4-bit loading") == 1
        assert not (tmp_path / "random-base").exists()
    assert m["images_per_s"] > 0 and m["tokens_per_s"] > m["images_per_s"] and m["peak_rss_bytes"] > 0
    assert m["images_per_s"] == pytest.approx(2 * 2 * 3 / m["measured_wall_s"])  # global batch 4, 1 image each
    assert "mfu" not in m and "peak_mem_allocated_bytes" not in m  # CPU: unknown peak, no CUDA allocator
    assert all(torch.isfinite(torch.tensor(result["series"]["loss"])))
    assert 0 < m["time_to_first_step_s"] < result["wall_s"]


@pytest.mark.slow
def test_fp16_on_cpu_is_unsupported_not_silently_fp32(tmp_path):
    result = run_cell(tmp_path, strategy="lora", precision="fp16", cpu_threads=2)
    assert result["status"] == "unsupported" and "fp16 mixed precision needs a CUDA GPU" in result["reason"]
    assert set(result["metrics"]) == {"time_to_main_s"} and result["_returncode"] == 0
    assert result["env"]["cpu_count"] == 2  # the spec's cpu_threads over the launcher's OMP_NUM_THREADS=1


@pytest.mark.slow
def test_same_seed_same_losses_and_resume_equals_uninterrupted(tmp_path):
    fields = dict(strategy="lora", precision="fp32", warmup_steps=0, measured_steps=6, checkpoint_every=3)
    a = run_cell(tmp_path / "a", **fields)
    b = run_cell(tmp_path / "b", **fields)
    assert a["status"] == b["status"] == "ok"
    assert a["series"]["loss"] == b["series"]["loss"] and len(a["series"]["loss"]) == 6
    other = run_cell(tmp_path / "seed", **{**fields, "seed": 1})
    assert other["series"]["loss"] != a["series"]["loss"]
    # interrupted after step 4 (the last checkpoint is step 3), then resumed
    stopped = run_cell(tmp_path / "c", extra_args=("--stop-after", "4"), **fields)
    assert stopped["status"] == "interrupted" and stopped["_returncode"] == 1
    assert (tmp_path / "c" / "checkpoints" / "step-00000003" / "COMPLETE").exists()
    resumed = run_spec_file(tmp_path / "c" / "spec.json", tmp_path / "c", extra_args=("--resume",))
    assert resumed["status"] == "ok" and resumed["metrics"]["resumed_from_step"] == 3
    assert resumed["series"]["loss"] == a["series"]["loss"]
    # a planted engine.pt and a checkpoint of another spec: tests/core/test_learning.py (checkpoint.resume itself)


class _Payload:
    """Unpickling this runs a command: what a planted checkpoint file would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_a_planted_deepspeed_checkpoint_file_is_refused_before_deepspeed_reads_it(tmp_path):
    from training_core.checkpoint import CheckpointError, check_deepspeed_files

    engine = tmp_path / "engine"
    engine.mkdir()
    torch.save({"module": {"w": torch.zeros(2)}, "ds_version": "0.19.8"}, engine / "mp_rank_00_model_states.pt")
    check_deepspeed_files(engine)  # tensors and plain data pass
    torch.save(_Payload(str(tmp_path / "PWNED")), engine / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match=r"refusing .*optim_states.pt: it names \['posix.system'\]"):
        check_deepspeed_files(engine)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_deepspeed_resume_equals_uninterrupted(tmp_path):
    fields = dict(strategy="full", precision="fp32", warmup_steps=0, measured_steps=4, checkpoint_every=2)
    a = run_cell(tmp_path / "a", nproc=2, **fields)
    stopped = run_cell(tmp_path / "b", nproc=2, extra_args=("--stop-after", "3"), **fields)
    assert stopped["status"] == "interrupted"
    resumed = run_spec_file(tmp_path / "b" / "spec.json", tmp_path / "b", nproc=2, extra_args=("--resume",))
    assert a["status"] == resumed["status"] == "ok", resumed["_stderr"][-3000:]
    assert resumed["metrics"]["resumed_from_step"] == 2
    assert resumed["series"]["loss"] == a["series"]["loss"]


@pytest.mark.slow
def test_accuracy_mode_evaluates_before_and_after(tmp_path):
    result = run_cell(tmp_path, task="hateful_memes", strategy="lora", precision="fp32", mode="accuracy",
                      synthetic_train=8, synthetic_eval=4, epochs=1, global_batch=2, max_new_tokens=4, num_crops=4)
    assert result["status"] == "ok", result["reason"]
    m = result["metrics"]
    assert 0 <= m["accuracy_before"] <= 1 and 0 <= m["accuracy"] <= 1
    assert len(result["series"]["loss"]) == 4  # 8 examples / global batch 2, one epoch
    predictions = json.loads((tmp_path / "eval_after.json").read_text())["predictions"]
    assert len(predictions) == 4 and {"id", "prediction", "answers"} <= set(predictions[0])


@pytest.mark.slow
def test_bad_spec_and_wrong_world_size_are_error_rows(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"strategy": "lora", "lr": -1}))
    bad = run_spec_file(tmp_path / "bad.json", tmp_path / "bad")
    assert bad["status"] == "error" and "lr: Input should be greater than 0" in bad["reason"]
    assert bad["_returncode"] == 2 and bad["spec"] == {"strategy": "lora", "lr": -1}
    RunSpec(strategy="lora", precision="fp32", gpus_per_node=2, global_batch=2).save(tmp_path / "two.json")
    mismatch = run_spec_file(tmp_path / "two.json", tmp_path / "two")
    assert mismatch["status"] == "error" and "torchrun --nproc_per_node=2" in mismatch["reason"]


def test_out_of_memory_is_classified():
    assert classify_exception(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert classify_exception(MemoryError())[0] == "oom"
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried")
    assert classify_exception(cpu) == ("oom", f"RuntimeError: {cpu}")
    assert classify_exception(ValueError("bad"))[0] == "error"


@pytest.mark.slow
def test_a_diverging_cell_ends_diverged_and_every_file_is_strict_json(tmp_path):
    result = run_cell(tmp_path, strategy="lora", precision="fp32", lr=1e30, lr_warmup_steps=0)
    assert result["status"] == "diverged" and result["_returncode"] != 0, result["_stderr"][-2000:]
    assert "non-finite loss" in result["reason"] and "at optimizer step 2" in result["reason"]
    losses = result["series"]["loss"]
    assert losses[-1] is None and all(isinstance(v, float) for v in losses[:-1])  # NaN written as null

    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON file")

    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_a_cpu_cell_runs_on_the_cpu_where_a_gpu_is_reported(tmp_path):
    """torch tells the cell's device choice that CUDA is available (no GPU is there: any use of it would fail): a
    `gpu: cpu` cell still trains on the CPU and records CPU metrics, not GPU ones."""
    env, asked = env_with_fake_cuda(tmp_path / "site")
    result = run_cell(tmp_path / "cell", strategy="lora", precision="fp32", env=env)
    assert result["status"] == "ok", result["reason"] + result["_stderr"][-3000:]
    m = result["metrics"]
    assert m["images_per_cpu_s"] > 0 and "peak_mem_allocated_bytes" not in m and m["pin_memory"] is False
    assert not asked.exists()  # the spec decided: the device choice did not even ask
    # the same environment does report a GPU to a cell that asks (then fails to use it: none is there)
    probe = subprocess.run([sys.executable, "-c", "from training_core.devices import current_device; "
                            "current_device('auto')"], env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode != 0 and asked.read_text().split() == ["training_core.devices"]
