"""`python -m harness doctor`: a table on any machine, missing packages named with the install hint, the same
verdicts a cell reaches (one source of truth), and the GPU listing read through the device boundary (NVML,
torch.cuda queries) when those are mocked."""

import json
import subprocess
import sys
import types

import pytest
import torch

from harness import doctor
from tests.blocking import ROOT, env_without
from training_core import probes
from training_core.devices import Device


def _doctor(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "doctor", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_doctor_prints_its_tables_and_exits_0_on_this_machine():
    out = _doctor()
    assert out.returncode == 0, out.stderr[-3000:]
    for text in ("this machine", "torch", "bf16", "flash-attn", "sdpa math", "bitsandbytes", "deepspeed", "NCCL",
                 "NVML", "shipped grids: which cells run here", "combinations of the shipped grids run here"):
        assert text in out.stdout, text
    if not torch.cuda.is_available():
        assert "no CUDA device" in out.stdout


@pytest.mark.slow
def test_a_missing_package_makes_its_strategies_unsupported_with_the_install_hint(tmp_path):
    out = _doctor("--json", env=env_without(tmp_path, ("deepspeed",)))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["deepspeed"]["status"] == "absent" and "pip install deepspeed" in checks["deepspeed"]["fix"]
    by_strategy: dict[str, list[dict]] = {}
    for combo in report["combinations"]:
        by_strategy.setdefault(combo["strategy"], []).append(combo)
    for strategy in ("full", "frozen_vision"):
        fp32 = [c for c in by_strategy[strategy] if c["precision"] == "fp32" and c["attention"] == "sdpa"]
        assert fp32 and fp32[0]["verdict"] == "unsupported"
        assert any("install it: pip install deepspeed" in reason for reason in fp32[0]["reasons"])
    lora = [c for c in by_strategy["lora"] if c["precision"] == "fp32" and c["attention"] == "sdpa"]
    assert lora[0]["runs"] and lora[0]["reasons"] == {}


def test_doctor_verdicts_are_the_cells_own(monkeypatch):
    """Doctor asks capabilities.unsupported_reason, the function a cell asks: change it and doctor follows."""
    device = Device("cpu", 0, "cpu", None, None)
    def verdict(spec, dev):
        if spec.strategy == "lora":
            return "no lora today"
        return "no accuracy today" if spec.mode == "accuracy" else None

    import training_core.capabilities as capabilities

    monkeypatch.setattr(capabilities, "unsupported_reason", verdict)  # doctor asks it when it runs
    combos = {(c.strategy, c.precision, c.attention): c for c in doctor.combinations(device)}
    assert all(c.verdict == "unsupported" and list(c.reasons) == ["no lora today"]
               for key, c in combos.items() if key[0] == "lora")
    # every cell is judged, with its mode: the accuracy grids' cells of a combination are named
    full = combos[("full", "bf16", "flash_attention_2")]
    assert full.verdict == "some grids" and "docvqa_accuracy" in full.reasons["no accuracy today"]
    assert "a100_speed" in full.grids and "a100_speed" not in full.reasons["no accuracy today"]
    assert combos[("full", "fp32", "sdpa")].runs


def test_gpu_listing_through_mocked_nvml_and_cuda_queries(monkeypatch):
    props = types.SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    fake_nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlSystemGetDriverVersion=lambda: b"580.65.06")
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml)
    checks = probes.gpus()
    assert [c.name for c in checks] == ["GPU 0", "GPU 1"]
    assert checks[0].detail == "NVIDIA H200, 141.0 GiB, sm_90, driver 580.65.06" and checks[0].status == "ok"
    h200 = Device("cuda", 0, "NVIDIA H200", (9, 0), 141 * 2**30)
    assert doctor._local_gpu(h200) == "H200"
    v100 = Device("cuda", 0, "Tesla V100-SXM2-32GB", (7, 0), 32 * 2**30)
    assert probes.bf16(v100).status == "absent"


def test_doctor_exits_1_when_a_check_failed_and_0_when_parts_are_only_absent(monkeypatch, capsys):
    from harness.cli import main

    checks = [probes.Check("bf16", "absent", "no CUDA device"), probes.Check("flash-attn", "ok", "2.8")]
    report = {"device": {}, "checks": checks, "combinations": []}
    monkeypatch.setattr(doctor, "run_checks", lambda: report)
    assert main(["doctor", "--json"]) == 0
    checks.append(probes.Check("bitsandbytes", "fail", "nf4 matmul differs from the dequantised one"))
    assert main(["doctor", "--json"]) == 1
    assert "doctor: 1 check(s) failed: bitsandbytes" in capsys.readouterr().err


def _nvml_with(driver_cuda: int, capabilities: list[tuple[int, int]]):
    return types.SimpleNamespace(nvmlInit=lambda: None, nvmlSystemGetCudaDriverVersion=lambda: driver_cuda,
                                 nvmlDeviceGetCount=lambda: len(capabilities),
                                 nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetCudaComputeCapability=lambda handle: capabilities[handle])


def test_doctor_names_a_cuda_build_the_driver_or_the_gpus_cannot_run(monkeypatch):
    """Issue 32 (1): torch built for CUDA 13 on an R535 driver saw no GPU and doctor said only 'no CUDA device'; on a
    V100 it has no kernels. The check reads the driver and the GPUs through NVML (torch sees nothing then)."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", _nvml_with(12020, [(9, 0)] * 8))
    (check,) = probes.cuda_build()
    assert check.status == "fail" and check.detail == ("torch is built for CUDA 13.0, but the driver supports CUDA up "
                                                       "to 12.2: torch sees no GPU")
    assert check.fix == "install torch built for CUDA 12 (make setup CUDA=cu126), or update the driver to R580 or newer"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"])
    monkeypatch.setitem(sys.modules, "pynvml", _nvml_with(13000, [(7, 0)] * 8))
    ok, kernels = probes.cuda_build()
    assert ok.status == "ok" and kernels.name == "kernels for sm_70" and kernels.status == "fail"
    assert "CUDA 13 builds dropped Volta: make setup CUDA=cu126" in kernels.detail

    monkeypatch.setitem(sys.modules, "pynvml", _nvml_with(13000, [(9, 0)] * 8))
    assert [c.status for c in probes.cuda_build()] == ["ok"]
    monkeypatch.setattr(torch.version, "cuda", None)
    assert probes.cuda_build() == []  # a CPU build: the torch line already says so


def test_doctor_measures_dev_shm_against_the_recipes_loader(monkeypatch):
    """Issue 32 (6): Docker's 64 MB /dev/shm, named with the fix before a cell runs."""
    from training_core import shm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(shm, "shm_total", lambda path="/dev/shm": 64 * 2**20)
    check = probes.shared_memory()
    assert check.status == "absent" and check.detail.startswith("64 MiB for 8 GPU(s)")
    assert "--shm-size=16g (or --ipc=host)" in check.fix and "about 2109 MiB" in check.fix
    monkeypatch.setattr(shm, "shm_total", lambda path="/dev/shm": 16 * 2**30)
    assert probes.shared_memory().status == "ok"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probes.shared_memory().status == "info"
