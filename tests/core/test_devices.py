"""Which device a cell runs on: the one its spec names (mocked torch.cuda queries stand for a GPU machine)."""

import types

import torch

from training_core.devices import current_device


def _fake_gpu(monkeypatch) -> list[int]:
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(
        name="NVIDIA A100-SXM4-80GB", major=8, minor=0, total_memory=80 * 2**30))
    return chosen


def test_a_cpu_cell_gets_the_cpu_on_a_machine_with_gpus(monkeypatch):
    chosen = _fake_gpu(monkeypatch)
    assert current_device("cpu").type == "cpu"
    assert current_device("CPU").type == "cpu"
    assert chosen == []  # CUDA was not touched


def test_a_gpu_cell_gets_the_cuda_device_of_its_local_rank(monkeypatch):
    chosen = _fake_gpu(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "3")
    for gpu in ("A100", "auto"):
        device = current_device(gpu)
        assert (device.type, device.index, device.name, device.capability) == ("cuda", 3, "NVIDIA A100-SXM4-80GB",
                                                                                (8, 0))
    assert chosen == [3, 3]


def test_without_cuda_every_cell_gets_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_device("A100").type == "cpu" and current_device().type == "cpu"
