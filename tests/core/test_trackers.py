import threading
import time

import numpy as np
import pytest
import torch

from training_core.devices import Device
from training_core.trackers.memory import MemoryTracker
from training_core.trackers.throughput import ThroughputTracker

CPU = Device("cpu", 0, "cpu", None, None)


def test_throughput_tracker_measures_a_known_sleep():
    syncs = []
    with ThroughputTracker(warmup_steps=2, sync=lambda: syncs.append(1)) as tracker:
        for step in range(6):
            time.sleep(0.2 if step < 2 else 0.05)  # slow warm-up steps must not count
            tracker.step(images=4, tokens=100, samples=2)
    m = tracker.metrics()
    assert m["warmup_steps"] == 2 and m["measured_steps"] == 4
    assert m["step_time_s_p50"] == pytest.approx(0.05, abs=0.02)
    assert m["measured_wall_s"] == pytest.approx(0.2, abs=0.06)
    assert m["images_per_s"] == pytest.approx(16 / m["measured_wall_s"])
    assert m["images_per_s"] == pytest.approx(80, rel=0.3)
    assert m["tokens_per_s"] == pytest.approx(400 / m["measured_wall_s"])
    assert len(syncs) == 7  # the device is synchronised before every clock read


def test_throughput_sums_ranks_and_takes_the_slowest_window():
    tracker = ThroughputTracker(warmup_steps=0, clock=iter([0.0, 1.0, 2.0]).__next__)
    with tracker:
        tracker.step(2, 10, 2)
        tracker.step(2, 10, 2)
    m = tracker.metrics(world_size=2, sum_all=lambda v: 2 * v, max_all=lambda v: v * 1.5)
    assert m["measured_wall_s"] == 3.0 and m["images_per_s"] == pytest.approx(8 / 3)
    assert m["images_per_s_per_gpu"] == pytest.approx(4 / 3)


def test_cpu_time_throughput_and_data_wait_over_the_measured_window():
    wall = iter([0.0, 1.0, 3.0, 6.0]).__next__  # enter, warm-up end, two measured steps of 2 s and 3 s
    cpu = iter([10.0, 11.0, 12.5]).__next__  # read at the window start and after each measured step
    tracker = ThroughputTracker(warmup_steps=1, clock=wall, cpu_clock=cpu)
    with tracker:
        tracker.step(4, 10, 4, data_wait_s=0.5)  # warm-up: its wait does not count
        tracker.step(4, 10, 4, data_wait_s=0.25)
        tracker.step(4, 10, 4, data_wait_s=0.75)
    m = tracker.metrics()
    assert m["cpu_s"] == 2.5 and m["images_per_cpu_s"] == pytest.approx(8 / 2.5)
    assert m["data_wait_s"] == 1.0 and m["data_wait_share"] == pytest.approx(1.0 / 5.0)
    assert "images_per_cpu_s" not in ThroughputTracker(warmup_steps=0).metrics()


def test_warmup_longer_than_the_run_measures_nothing():
    with ThroughputTracker(warmup_steps=5) as tracker:
        tracker.step(1, 1, 1)
    assert tracker.metrics() == {"warmup_steps": 1, "measured_steps": 0}


def test_memory_tracker_sees_a_known_allocation_and_leaves_cuda_keys_absent():
    with MemoryTracker(CPU, interval=0.005) as memory:
        memory.start_window()
        baseline = memory.metrics()["peak_rss_bytes"]
        block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MiB, touched
        time.sleep(0.05)
        del block
        peak = memory.metrics()["peak_rss_bytes"]
    assert peak - baseline >= 280 * 2**20
    keys = set(memory.metrics())
    assert keys == {"peak_rss_bytes"}  # no CUDA or NVML on a CPU: absent, not zero


def test_linear_schedule_is_transformers_formula():
    from transformers import get_linear_schedule_with_warmup

    from training_core.optim import build_scheduler
    from training_core.spec import RunSpec

    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = build_scheduler(ours_opt, RunSpec(lr_warmup_steps=5), total_steps=20)
    theirs = get_linear_schedule_with_warmup(theirs_opt, 5, 20)
    for _ in range(25):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr())
        ours_opt.step(), theirs_opt.step(), ours.step(), theirs.step()


def test_model_state_bytes_counts_parameters_and_adam_state():
    from training_core.trackers.memory import model_state_bytes

    model = torch.nn.Linear(10, 4)  # 44 parameters
    optimizer = torch.optim.AdamW(model.parameters())
    assert model_state_bytes(model, optimizer) == 44 * 4  # no state before the first step
    model(torch.ones(1, 10)).sum().backward()
    optimizer.step()
    # fp32 params + exp_avg + exp_avg_sq, plus AdamW's scalar `step` tensor per parameter
    assert model_state_bytes(model, optimizer) == 44 * 4 * 3 + 2 * 4


def test_a_reset_during_a_sample_is_not_undone():
    """The sampler's read and its update of the peak are one step: a reset (the measured window starting) that comes
    while a sample is reading must not let that sample write the warm-up peak back."""
    from training_core.trackers.memory import _Sampler

    reading, release = threading.Event(), threading.Event()
    values = iter([1000, None, 10])  # warm-up peak at construction; the slow sample; the reset

    def read():
        value = next(values)
        if value is None:  # the sampler's read: it sees the current value, 10, but only once released
            reading.set()
            release.wait(10)
            return 10
        return value

    sampler = _Sampler(read, interval=3600)
    assert sampler.peak == 1000
    sampling = threading.Thread(target=sampler.sample)
    sampling.start()
    assert reading.wait(10)
    resetting = threading.Thread(target=sampler.reset)
    resetting.start()
    resetting.join(0.5)  # a reset that does not wait for the sample finishes here
    release.set()
    sampling.join(10), resetting.join(10)
    assert sampler.peak == 10  # the measured window starts from now, not from the warm-up peak


def _rank_with_or_without_nvml(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo ranks on a 'GPU' (torch.cuda's allocator queries mocked): rank 0 can read NVML, rank 1
    cannot. Both measure, then write what they report."""
    import json
    import sys

    import torch.distributed as dist

    from tests.fake_nvml import eight_gpus, fake_pynvml
    from training_core import distributed
    from training_core.trackers.energy import EnergyTracker

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.cuda.max_memory_allocated = torch.cuda.max_memory_reserved = lambda index=None: 100 * (rank + 1)
    torch.cuda.reset_peak_memory_stats = lambda index=None: None
    sys.modules["pynvml"] = fake_pynvml(eight_gpus()) if rank == 0 else None  # rank 1: NVML fails to import
    device = Device("cuda", 0, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * 2**30)
    with MemoryTracker(device) as memory, EnergyTracker(device) as energy:
        memory.start_window()
        energy.start_window()
    reported = {**memory.metrics(distributed.max_all, distributed.min_all),
                **energy.metrics(10, distributed.sum_all, distributed.min_all)}
    with open(f"{out_dir}/rank{rank}.json", "w") as handle:
        json.dump(reported, handle)
    dist.destroy_process_group()


def test_ranks_whose_nvml_differs_agree_instead_of_waiting_on_each_other(tmp_path):
    import json

    import torch.multiprocessing as mp

    context = mp.start_processes(_rank_with_or_without_nvml, args=(str(tmp_path / "init"), str(tmp_path)),
                                 nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks hung in a collective (a key measured on one rank only)")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0] == reports[1]  # the same keys and values on every rank
    assert reports[0]["peak_mem_allocated_bytes"] == 200 and reports[0]["peak_rss_bytes"] > 0
    assert "peak_mem_device_bytes" not in reports[0] and "energy_j" not in reports[0]  # not every rank had NVML


def test_a_checkpoint_save_inside_the_window_is_not_training_time():
    """Issue 32 (12): a save between measured steps was counted in the next step's time and in the window."""
    # enter 0; warm-up step ends 1; measured step ends 2; a save from 2 to 7; measured step ends 8
    wall = iter([0.0, 1.0, 2.0, 2.0, 7.0, 8.0]).__next__
    cpu = iter([10.0, 11.0, 11.0, 15.0, 16.0]).__next__  # window start, step, save start, save end, step
    tracker = ThroughputTracker(warmup_steps=1, clock=wall, cpu_clock=cpu)
    with tracker:
        tracker.step(2, 10, 2)
        tracker.step(2, 10, 2)
        with tracker.excluded():
            pass
        tracker.step(2, 10, 2)
    m = tracker.metrics()
    assert [s.seconds for s in tracker.measured] == [1.0, 1.0]  # not 1 and 6
    assert m["measured_wall_s"] == 2.0 and m["images_per_s"] == 2.0 and m["excluded_s"] == 5.0
    assert m["cpu_s"] == 2.0  # 16 - 10 - the save's 4
