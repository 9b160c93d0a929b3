"""NVML reads the GPU a rank uses: CUDA's numbering (within CUDA_VISIBLE_DEVICES) mapped to NVML's, which ignores
the variable. A fake pynvml stands at the device boundary."""

import sys

import pytest

from harness.grid import hardware
from tests.fake_nvml import FakeGPU, eight_gpus, fake_pynvml
from training_core import probes
from training_core.devices import Device
from training_core.nvml import handle_for
from training_core.trackers.energy import EnergyTracker
from training_core.trackers.memory import _nvml_reader


def cuda(index: int) -> Device:
    return Device("cuda", index, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * 2**30)


@pytest.fixture
def box(monkeypatch):
    gpus = eight_gpus()
    mig = FakeGPU("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "MIG-1111bbbb-0000-0000-0000-000000000000", used=7 * 2**20)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus, {mig.uuid: mig}))
    return gpus, mig


@pytest.mark.parametrize(("visible", "expected"), [
    (None, [0, 1, 2, 3, 4, 5, 6, 7]),
    ("4,5", [4, 5]),
    ("6,2", [6, 2]),
    ("GPU-3333aaaa-0000-0000-0000-000000000003,GPU-1111", [3, 1]),  # full UUID and a unique prefix
    ("5,GPU-nope,1", [5]),  # CUDA stops at the first entry it cannot use
    ("3,9,1", [3]),
])
def test_cuda_devices_map_to_the_nvml_devices_cuda_visible_devices_names(box, monkeypatch, visible, expected):
    gpus, _ = box
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for cuda_index, nvml_index in enumerate(expected):
        assert handle_for(cuda_index)[1] is gpus[nvml_index]
    with pytest.raises(LookupError, match=f"CUDA device {len(expected)} has no NVML device"):
        handle_for(len(expected))
    assert hardware.detect().gpu_count == len(expected)


def test_a_mig_instance_is_its_own_handle(box, monkeypatch):
    _, mig = box
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mig.uuid)
    assert handle_for(0)[1] is mig
    assert _nvml_reader(cuda(0))() == 7 * 2**20
    assert hardware.detect().gpu_names == ("NVIDIA A100-SXM4-80GB MIG 1g.10gb",)


def test_memory_energy_and_doctor_read_the_gpu_the_rank_uses(box, monkeypatch):
    gpus, _ = box
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert _nvml_reader(cuda(0))() == 5 * 2**30  # NVML's GPU 4, not its GPU 0
    assert _nvml_reader(cuda(1))() == 6 * 2**30
    energy = EnergyTracker(cuda(1))  # NVML's GPU 5
    energy.start_window()
    gpus[5].energy_mj += 30_000
    gpus[0].energy_mj += 999_000  # another job on GPU 0 must not count
    energy.__exit__(None, None, None)
    assert energy.metrics(images_total=10) == {"energy_j": 30.0, "energy_j_per_image": 3.0}
    check = probes.nvml(cuda(0))
    assert check.status == "ok" and check.detail.startswith("device memory 5.0 / 80.0 GiB used")
