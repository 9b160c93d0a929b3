"""The GPU tier: `pytest -m gpu` (`make test-gpu`); every test here is skipped without CUDA (tests/conftest.py).

Written to pass on a real NVIDIA GPU, each against a known answer or a stated tolerance:
- attention: eager, sdpa and flash-attn (when installed) logits of the tiny model (with an image) and of a
  full-width Phi-3.5-vision decoder layer (one layer, text) in bf16: each backend's error against an fp32 eager
  reference is at most 3x bf16 eager's own error plus 1e-3 (bf16 rounding and accumulation order are the only
  expected differences);
- the memory tracker sees a known 256 MiB allocation, and NVML's device peak is >= torch's reserved peak;
- a tiny cell end to end through `harness run` (grid hardware `auto`, the recipe's loader, MFU in (0, 1));
- QLoRA's 4-bit path trains steps on CUDA; DeepSpeed ZeRO-2 runs steps on one GPU with NCCL.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.store import RowStore
from tests.core.cells import run_cell
from training_core.devices import current_device
from training_core.model import build_config, build_model
from training_core.trackers.flops import peak_flops
from training_core.trackers.memory import MemoryTracker

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
# each backend is compared with bf16 eager; flash attention is a skip with its reason where flash-attn is missing
BACKENDS = ["sdpa", pytest.param("flash_attention_2", marks=pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed (make setup-gpu)"))]


def _logits_by_backend(config, inputs: dict, backends: list[str]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    reference = build_model(config, device="cuda", dtype=torch.float32, attn_implementation="eager").eval()
    state = reference.state_dict()
    with torch.no_grad():
        out = {"fp32": reference(**inputs).logits.float()}
    del reference
    for backend in backends:
        model = build_model(config, device="cuda", dtype=torch.bfloat16, attn_implementation=backend).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            bf16_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
            out[backend] = model(**bf16_inputs).logits.float()
        del model
    torch.cuda.empty_cache()
    return out


def _assert_backends_agree(logits: dict[str, torch.Tensor]) -> None:
    reference = logits["fp32"]
    eager_error = (logits["eager"] - reference).abs().max().item()
    for backend in logits.keys() - {"fp32", "eager"}:
        error = (logits[backend] - reference).abs().max().item()
        assert error <= 3 * eager_error + 1e-3, f"{backend}: max |dlogit| {error:.4g} vs bf16 eager {eager_error:.4g}"
        assert torch.isfinite(logits[backend]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_backends_agree_on_the_tiny_model(tiny_config, tiny_processor, make_image, backend):
    batch = tiny_processor(tiny_processor.chat_prompt("<|image_1|>\nWhat is shown?"), [make_image(120, 90)])
    inputs = {k: batch[k].cuda() for k in ("input_ids", "pixel_values", "image_sizes")}
    _assert_backends_agree(_logits_by_backend(tiny_config, inputs, ["eager", backend]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_backends_agree_on_a_full_width_decoder_layer(backend):
    config = build_config("phi-3.5-vision", num_hidden_layers=1)  # full width (3072, 32 heads), one layer
    ids = torch.randint(100, 30000, (1, 1024), generator=torch.Generator().manual_seed(0)).cuda()
    _assert_backends_agree(_logits_by_backend(config, {"input_ids": ids}, ["eager", backend]))


def test_memory_tracker_sees_a_known_allocation_and_nvml_covers_torch():
    device = current_device()
    size = 256 * 2**20
    with MemoryTracker(device) as memory:
        memory.start_window()
        before = torch.cuda.memory_allocated(device.index)
        block = torch.empty(size, dtype=torch.uint8, device=device.torch)
        time.sleep(0.3)  # NVML is sampled every 50 ms
        metrics = memory.metrics()
        del block
    assert size <= metrics["peak_mem_allocated_bytes"] - before < size + 8 * 2**20
    assert metrics["peak_mem_reserved_bytes"] >= metrics["peak_mem_allocated_bytes"]
    if "peak_mem_device_bytes" not in metrics:
        pytest.skip("NVML's memory counter is not readable here")
    assert metrics["peak_mem_device_bytes"] >= metrics["peak_mem_reserved_bytes"]


def test_a_tiny_cell_end_to_end_through_harness_run(tmp_path):
    grid = tmp_path / "tiny_gpu.yaml"
    grid.write_text("""name: tiny_gpu
hardware: {gpu: auto, gpus_per_node: 1}
defaults: {model: tiny, task: docvqa, strategy: lora, precision: bf16, attention: sdpa, lora_rank: 4,
           batch_per_gpu: 4, num_crops: 4, warmup_steps: 1, measured_steps: 3}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
    out = subprocess.run([sys.executable, "-m", "harness", "run", str(grid), "--results", str(tmp_path / "r")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (group,) = (tmp_path / "r" / "tiny_gpu").iterdir()
    device = current_device()
    assert group.name.startswith("1x") and group.name[2:] in device.name  # e.g. 1xH200
    (row,) = RowStore(group).rows()
    m = row["metrics"]
    assert row["status"] == "ok" and m["images_per_s"] > 0 and row["env"]["gpu_count"] >= 1
    assert m["dataloader_workers"] == 4 and m["pin_memory"] is True and 0 <= m["data_wait_share"] < 1
    assert m["peak_mem_allocated_bytes"] > 0
    if "peak_mem_device_bytes" in m:
        assert m["peak_mem_device_bytes"] >= m["peak_mem_reserved_bytes"]
    if peak_flops(device.name, "bf16") is None:
        pytest.skip(f"no peak FLOPs known for {device.name}: MFU is absent by design")
    assert 0 < m["mfu"] < 1


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_qlora_trains_on_cuda(tmp_path):
    result = run_cell(tmp_path, strategy="qlora", precision="bf16", warmup_steps=1, measured_steps=2, gpu="auto")
    assert result["status"] == "ok", result["reason"]
    m = result["metrics"]
    assert all(torch.isfinite(torch.tensor(result["series"]["loss"])))
    assert 0 < m["trainable_params"] < m["total_params"] and "mfu" not in m  # no MFU for 4-bit, by design


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero2_step_on_one_gpu_with_nccl(tmp_path):
    result = run_cell(tmp_path, strategy="full", precision="bf16", warmup_steps=1, measured_steps=2, gpu="auto")
    assert result["status"] == "ok", result["reason"] + result["_stderr"][-3000:]
    assert result["env"]["distributed_backend"] == "nccl" and result["env"]["world_size"] == 1
    assert result["metrics"]["trainable_params"] == result["metrics"]["total_params"]
    assert len(result["series"]["loss"]) == 3 and all(loss == loss for loss in result["series"]["loss"])
