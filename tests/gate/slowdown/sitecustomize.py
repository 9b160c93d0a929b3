"""A deliberate slowdown for the gate's proof (tests/gate): on PYTHONPATH with GATE_SLOWDOWN=<strategy>, every
training step of a cell of that strategy costs GATE_SLOWDOWN_FACTOR (default 2) times its CPU time: after each
`train_step` the process spins for (factor - 1) x the CPU time spent since the previous step ended (the data
fetch and the step itself). Losses, parameters and memory are unchanged; only the speed is."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

TARGET = os.environ.get("GATE_SLOWDOWN")
FACTOR = float(os.environ.get("GATE_SLOWDOWN_FACTOR", "2"))


def _cell_strategy() -> str | None:
    argv = sys.argv
    if "--spec" not in argv:
        return None
    with open(argv[argv.index("--spec") + 1]) as f:
        return json.load(f).get("strategy")


def _slow(cls) -> None:
    original = cls.train_step
    state = {"since": None}

    def train_step(self, micro_batches):
        if state["since"] is None:
            state["since"] = time.thread_time()
        loss = original(self, micro_batches)
        now = time.thread_time()
        until = now + (now - state["since"]) * (FACTOR - 1)
        while time.thread_time() < until:
            pass
        state["since"] = time.thread_time()
        return loss

    cls.train_step = train_step


class _PatchEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "training_core.engine":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or _cell_strategy() != TARGET:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for cls in (module.PlainEngine, module.DeepSpeedEngine):
                _slow(cls)
            print(f"gate test: {TARGET} slowed {FACTOR}x", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


if TARGET:
    sys.meta_path.insert(0, _PatchEngine())
