"""Shared fixtures: the tiny preset, its tokenizer and processor, synthetic images. Nothing touches the network."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from PIL import Image

pytest_plugins = ["pytester"]  # tests of the suite's own rules (tests/test_cli.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from training_core.model import build_config, build_model, build_processor, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    return build_config("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_processor(tiny_config, tiny_tokenizer):
    return build_processor(tiny_config, tiny_tokenizer, num_crops=4)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return build_model(tiny_config, attn_implementation="eager")


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB image with structure in both directions (so crops and views differ)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (3,), generator=g)
    ys = torch.arange(height).view(-1, 1)
    xs = torch.arange(width).view(1, -1)
    channels = [(base[c] + (c + 1) * xs + (3 - c) * ys) % 256 for c in range(3)]
    array = torch.stack(channels, dim=-1).to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


@pytest.fixture
def make_image():
    return gradient_image


# What a process started by a test must not be unless the test is marked `slow` (the unit tier, make test-fast, runs
# no cell process, no torchrun and no grid).
CELL_COMMANDS = ("training_core.run", "torch.distributed.run", "torchrun")


def starts_cells(args) -> bool:
    """Whether a command line starts a cell (`training_core.run`), torchrun, or a grid run (`harness run` without
    `--dry-run`)."""
    words = [os.fspath(w) for w in (args if isinstance(args, list | tuple) else [args])]
    if any(w in CELL_COMMANDS or os.path.basename(w) == "torchrun" for w in words):
        return True
    return any(words[i:i + 2] == ["harness", "run"] for i in range(len(words))) and "--dry-run" not in words


@pytest.fixture(autouse=True)
def _the_unit_tier_starts_no_cells(request, monkeypatch):
    """A test that starts a cell, torchrun or a grid run belongs to the end-to-end tier: it fails here, saying so,
    unless it is marked `slow` (so `make test-fast` cannot quietly grow slow again); the GPU and gate tiers are
    end-to-end by nature."""
    if any(request.node.get_closest_marker(tier) for tier in ("slow", "gpu", "gate", "slurm", "estimator")):
        return
    real = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        if starts_cells(args):
            pytest.fail(f"{request.node.nodeid} starts {args!r}: mark it @pytest.mark.slow (the end-to-end tier)",
                        pytrace=False)
        real(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


def pytest_collection_modifyitems(config, items):
    """The GPU tier (`-m gpu`) runs only where CUDA is: elsewhere those tests are skipped, saying why. The gate's
    own proof (`-m gate`, minutes of timed runs under a CPU burner) runs only when asked for: make test-gate; so does the
estimator's check at real widths (`-m estimator`, minutes of real CPU steps): make test-estimator, and the MLflow
server round trip (`-m tracking`, a real server started twice): make test-tracking."""
    markexpr = config.getoption("markexpr", "") or ""
    gate_asked = "gate" in markexpr
    slurm_asked = "slurm" in markexpr and "not slurm" not in markexpr
    skip_slurm = pytest.mark.skip(reason="the SLURM tier needs a cluster: make test-slurm (CI runs it)")
    skip_gate = pytest.mark.skip(reason="the regression gate's proof: make test-gate (CI runs it)")
    estimator_asked = "estimator" in markexpr and "not estimator" not in markexpr
    skip_estimator = pytest.mark.skip(reason="the estimator's check at real widths: make test-estimator (CI runs it)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (the GPU tier: make test-gpu on a GPU machine)")
    tracking_asked = "tracking" in markexpr and "not tracking" not in markexpr
    skip_tracking = pytest.mark.skip(reason="the MLflow server round trip: make test-tracking (CI runs it)")
    for item in items:
        if "gate" in item.keywords and not gate_asked:
            item.add_marker(skip_gate)
        if "slurm" in item.keywords and not slurm_asked:
            item.add_marker(skip_slurm)
        if "estimator" in item.keywords and not estimator_asked:
            item.add_marker(skip_estimator)
        if "tracking" in item.keywords and not tracking_asked:
            item.add_marker(skip_tracking)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
