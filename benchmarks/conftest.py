"""Micro-benchmarks (pytest-benchmark): `make bench-micro`. Not part of `make test`. One thread = one CPU core."""

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_core():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def report(benchmark, images_per_call: int, label: str) -> float:
    rate = images_per_call / benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s_per_core"] = round(rate, 2)
    target = float(os.environ.get("BENCH_MIN_IMAGES_PER_S", "0"))
    print(f"\n{label}: {rate:.1f} images/s on one core (target 20)")
    if target and rate < target:
        pytest.fail(f"{label}: {rate:.1f} images/s is below BENCH_MIN_IMAGES_PER_S={target}")
    return rate
