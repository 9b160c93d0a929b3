"""Task adapters, a registry by name: the recipe's prompts, turn selection, metric and data sources per task.

`get_task(name)` returns a `TaskSpec`; adding a task is adding one module that calls `register`.
"""

from __future__ import annotations

from .spec import EvalItem, HFSource, PromptTurn, TaskSpec

TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is registered twice")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


from . import docvqa, hateful_memes, nlvr2, ucf101  # noqa: E402,F401  (each registers its tasks)

__all__ = ["TASKS", "EvalItem", "HFSource", "PromptTurn", "TaskSpec", "get_task", "register"]
