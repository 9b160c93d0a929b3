"""The grid file's schema: its keys and their types (pydantic, strict: an unknown key is an error), profiles, limits,
and `auto` hardware. The file format itself is described in harness/grid/file.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from training_core.errors import UserError

from .hardware import AUTO, Machine, detect


class GridError(UserError):
    """A grid problem, naming the file, the key and the fix."""


class Hardware(BaseModel):
    """`gpu: auto` and `gpus_per_node: auto`: the GPUs of the machine the grid runs on (1 to 8 of them), resolved
    when the grid is loaded (see `resolve_hardware`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: str = Field(default="cpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # a word: it names a folder
    gpus_per_node: int | Literal["auto"] = 1
    nodes: int = Field(default=1, ge=1)

    @field_validator("gpus_per_node")
    @classmethod
    def _count(cls, value):
        if value != AUTO and value < 1:
            raise ValueError("Input should be greater than or equal to 1 (or 'auto': the GPUs of this machine)")
        return value

    @property
    def label(self) -> str:
        """The results group of a grid run for this hardware elsewhere (SLURM): '8xA100', 'cpu'."""
        return "cpu" if self.gpu == "cpu" else f"{self.gpus_per_node}x{self.gpu}"


MAX_AUTO_GPUS = 8


def resolve_hardware(hardware: Hardware, machine: Machine | None = None) -> Hardware:
    """`auto` values from this machine's GPUs (NVML); without GPUs `gpu: auto` stays (its cells then end
    `unsupported` or are refused by the runner's hardware check) and `gpus_per_node: auto` is 1."""
    if hardware.gpu != AUTO and hardware.gpus_per_node != AUTO:
        return hardware
    machine = machine if machine is not None else detect()
    gpu = machine.gpu if hardware.gpu == AUTO and machine.gpu_count else hardware.gpu
    count = hardware.gpus_per_node if hardware.gpus_per_node != AUTO else max(1, min(machine.gpu_count,
                                                                                     MAX_AUTO_GPUS))
    return Hardware(gpu=gpu, gpus_per_node=count, nodes=hardware.nodes)


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float = Field(default=3600, gt=0, le=30 * 24 * 3600, allow_inf_nan=False)  # at most 30 days
    memory_gb: float | None = Field(default=None, gt=0, le=2**20, allow_inf_nan=False)  # at most 1 PiB


class ExcludeRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any]
    reason: str


class ReferenceRule(BaseModel):
    """Cells matching every key (and without their own `reference`) point at documented row `key`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any]
    key: str


class Patch(BaseModel):
    """In a profile: cells matching every key of `match` (after the profile's override) get `set` on top of it,
    e.g. a lower learning rate for the strategy that needs one. Each patch must match at least one cell."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any]
    set: dict[str, Any]
    reason: str = ""


class Profile(BaseModel):
    """A named variant of a grid (`--profile NAME`): other hardware, defaults under the cells, overrides over them,
    patches over those for the cells they match."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    hardware: Hardware | None = None
    defaults: dict[str, Any] = {}
    override: dict[str, Any] = {}
    patches: list[Patch] = []
    limits: Limits | None = None


class GridFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a folder name: not '.', '..' or hidden
    description: str = ""
    hardware: Hardware = Hardware()
    defaults: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[ExcludeRule] = []
    references: list[ReferenceRule] = []
    limits: Limits = Limits()
    profiles: dict[str, Profile] = {}

    def with_profile(self, name: str | None, path: Path) -> GridFile:
        if name is None:
            return self
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise GridError(f"{path}: profiles.{name}: no such profile (this grid has: {known})")
        profile = self.profiles[name]
        return self.model_copy(update={
            "hardware": profile.hardware or self.hardware,
            "defaults": {**self.defaults, **profile.defaults},
            "axes": {k: v for k, v in self.axes.items() if k not in profile.override},
            "include": [{**cell, **profile.override} for cell in self.include],
            "limits": profile.limits or self.limits,
            "profiles": {},
        })
