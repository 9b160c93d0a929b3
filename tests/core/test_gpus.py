"""The one GPU catalogue (training_core/gpus.py): complete, and read the same way by every part that names a GPU (the
grid's rules, a cell's device rules, the estimator's fit, the peak-FLOPs table, results groups and baseline keys)."""

from __future__ import annotations

import pytest

from harness.gate.baseline import baseline_key
from harness.grid.hardware import Machine, group_label, mismatch
from training_core.estimate.fit import fit
from training_core.gpus import BY_NAME, CATALOGUE, grid_reason, lookup, memory_bytes, short_name
from training_core.trackers.flops import PEAKS, peak_entry

# Names as NVML and torch report them, for every GPU of the catalogue (and variants the peak table tells apart).
DEVICE_NAMES = {
    "Tesla V100-SXM2-32GB": "V100", "Tesla V100-PCIE-16GB": "V100", "Tesla V100S-PCIE-32GB": "V100",
    "Tesla T4": "T4", "Quadro RTX 8000": "RTX8000", "NVIDIA A100-SXM4-80GB": "A100", "NVIDIA A100-PCIE-40GB": "A100",
    "NVIDIA A800-SXM4-80GB": "A800", "NVIDIA A10G": "A10G", "NVIDIA A10": "A10", "NVIDIA L40S": "L40S",
    "NVIDIA H100 80GB HBM3": "H100", "NVIDIA H100 PCIe": "H100", "NVIDIA H100 NVL": "H100", "NVIDIA H800": "H800",
    "NVIDIA H200": "H200",
}


def test_the_catalogue_is_complete():
    """Every GPU with rules has a memory size and a device name that maps onto it; every GPU of the peak table is a
    GPU of the catalogue; names are unique."""
    assert len(BY_NAME) == len(CATALOGUE)
    assert set(DEVICE_NAMES.values()) == set(BY_NAME)  # every catalogue GPU is met under a real device name
    for gpu in CATALOGUE:
        assert gpu.memory > 8 * 2**30 and gpu.memory_source in ("torch", "data sheet"), gpu.name
        assert (7, 0) <= gpu.capability <= (9, 0), gpu.name
        assert fit(2**30, 1, gpu.name).total == gpu.memory  # the estimator judges every catalogued GPU
        for variant, size in gpu.variants:
            assert lookup(variant) is gpu and memory_bytes(variant) == size < gpu.memory
    for peak in PEAKS:
        assert peak.gpu in BY_NAME, f"{peak.key}: a peak for a GPU the catalogue does not know"
        assert peak_entry(" ".join(peak.match)) is peak


@pytest.mark.parametrize(("device", "short"), sorted(DEVICE_NAMES.items()))
def test_device_names_map_onto_the_catalogue(device, short):
    assert short_name(device) == short
    assert lookup(device) is BY_NAME[short]
    assert Machine((device,) * 8).gpu == short  # results groups: 8xA100, 8xV100, 8xRTX8000


def test_unknown_gpus_keep_a_readable_name_and_are_not_guessed():
    assert short_name("NVIDIA B200") == "B200" and lookup("NVIDIA B200") is None
    assert memory_bytes("B200") is None and fit(1, 1, "B200").fits is None
    assert peak_entry("NVIDIA B200") is None


def test_the_grid_rules_follow_each_gpus_capability():
    for gpu in CATALOGUE:
        bf16 = grid_reason(gpu.name, "bf16", "sdpa", "lora")
        flash = grid_reason(gpu.name, "bf16", "flash_attention_2", "lora")
        qlora = grid_reason(gpu.name, "fp16", "sdpa", "qlora")
        assert (bf16 is None) == gpu.bf16 and (flash is None) == (gpu.flash and gpu.bf16), gpu.name
        assert (qlora is None) == gpu.four_bit, gpu.name
    assert "V100 has no bf16 (sm_70)" in grid_reason("V100", "bf16", "sdpa", "full")
    assert grid_reason("B200", "bf16", "flash_attention_2", "qlora") is None  # unknown: only the universal rules
    assert "flash attention needs bf16" in grid_reason("B200", "fp16", "flash_attention_2", "lora")


def test_a_v100_baseline_is_keyed_as_its_results_group_is_named():
    """The baseline key once took the first word of the device name: 'Tesla V100-...' became '...-Teslax8' while the
    group was 8xV100."""
    row = {"run_id": "x", "matrix": "v100_speed", "spec": {"model": "phi-3.5-vision"},
           "env": {"gpus": [{"name": "Tesla V100-SXM2-32GB"}] * 8, "world_size": 8}}
    assert baseline_key([row]) == "v100_speed/phi-3.5-vision-V100x8"
    assert group_label(Machine(("Tesla V100-SXM2-32GB",) * 8), "V100", 8) == "8xV100"
    a100 = {**row, "env": {"gpus": [{"name": "NVIDIA A100-SXM4-80GB"}], "world_size": 1}}
    assert baseline_key([a100]) == "v100_speed/phi-3.5-vision-A100x1"


def test_an_a10_grid_does_not_run_on_a100s_and_a_quadro_matches_its_grid():
    """The hardware check compared names as substrings: 'A10' is in 'NVIDIA A100-SXM4-80GB'."""
    a100s = Machine(("NVIDIA A100-SXM4-80GB",) * 8)
    assert "the grid is for A10 GPUs" in mismatch(a100s, "A10", 8)
    assert mismatch(a100s, "A100", 8) is None
    assert mismatch(Machine(("Quadro RTX 8000",) * 2), "RTX8000", 2) is None
