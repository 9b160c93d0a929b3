"""The random QLoRA base is written in the compute dtype and drawn on the cell's GPU (issue 32, item 13): in fp32 on
one CPU thread it cost the real model 1-3 minutes and a 16.6 GB file per cell."""

import torch
from safetensors import safe_open

from training_core.spec import RunSpec
from training_core.strategies.base import build_base, model_config, random_base_device, random_base_dtype
from training_core.strategies.lora import qlora_quantization


def test_the_base_is_written_in_the_compute_dtype_and_the_unquantised_parts_load_in_the_weights_dtype(tmp_path):
    spec = RunSpec(model="tiny", strategy="qlora", precision="bf16", gpus_per_node=1, global_batch=1)
    kept = tmp_path / "kept"
    model = build_base(spec, torch.device("cpu"), torch.float32, qlora_quantization(spec, model_config(spec)),
                       keep_random=kept, scratch=tmp_path / "scratch")
    with safe_open(str(kept / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}  # written in bf16, half of fp32's bytes
    assert model.lm_head.weight.dtype == torch.float32  # loaded into the cell's weights dtype as before
    assert not (tmp_path / "scratch" / "random-base").exists()  # removed once loaded


def test_fp32_cells_keep_fp32_and_the_gpu_draws_when_there_is_one():
    fp32 = RunSpec(model="tiny", strategy="qlora", precision="fp32", gpus_per_node=1, global_batch=1)
    assert random_base_dtype(fp32, torch.float32) == torch.float32
    assert random_base_dtype(fp32.model_copy(update={"precision": "fp16"}), torch.float32) == torch.float16
    assert random_base_device(torch.device("cuda", 3)) == torch.device("cuda", 3)
    assert random_base_device(torch.device("cpu")) == torch.device("cpu")
