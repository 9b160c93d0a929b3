"""What a run costs: GPU-hour prices and task fine-tunes as data with sources (`results/prices.yaml`, or a user's own
file of the same shape through `--prices`), and the arithmetic the report and the results table share.

- dollars per 1,000 images = GPUs used x price per GPU-hour / (images/s x 3600) x 1000;
- a task's fine-tune: its training examples x epochs / images/s, in hours, and those hours x GPUs x price per GPU-hour.

A price is looked up by the row's GPU: the exact variant first (`A100-40GB`), then the catalogue's short name
(training_core/gpus.py). A GPU without a price has no cost: nothing is guessed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training_core.errors import UserError
from training_core.gpus import lookup

from .paths import ROOT
from .readers import load_yaml, schema_problems
from .rows import cell_gpus

PRICES = ROOT / "results" / "prices.yaml"


class PricesError(UserError):
    """A malformed prices file, naming the file and the key."""


class Price(BaseModel):
    """One machine's GPU-hour price, with where it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu: str = Field(min_length=1)
    machine: str = Field(min_length=1)
    gpus: int = Field(gt=0)
    usd_per_hour: float = Field(gt=0)
    region: str = Field(min_length=1)
    source: str = Field(min_length=10)
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")

    @property
    def usd_per_gpu_hour(self) -> float:
        return self.usd_per_hour / self.gpus


class Finetune(BaseModel):
    """A task's fine-tune: its training examples x epochs, with where they come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str = Field(min_length=1)
    examples: int = Field(gt=0)
    epochs: float = Field(gt=0)
    source: str = Field(min_length=10)

    @property
    def images(self) -> float:
        return self.examples * self.epochs


class _Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: str = "USD"
    prices: list[Price]
    finetunes: list[Finetune] = []


@dataclass(frozen=True)
class Prices:
    path: Path
    currency: str
    prices: tuple[Price, ...]
    finetunes: tuple[Finetune, ...]

    def price(self, gpu: str | None) -> Price | None:
        """The price of a GPU by the row's or table's name: the exact entry ('A100-40GB'), else its short name's."""
        if not gpu or gpu.lower() == "cpu":
            return None
        exact = {p.gpu.upper(): p for p in self.prices}
        if gpu.upper() in exact:
            return exact[gpu.upper()]
        known = lookup(gpu)
        return exact.get(known.name.upper()) if known is not None else None

    def finetune(self, task: str | None) -> Finetune | None:
        return next((f for f in self.finetunes if f.task == task), None)


def load_prices(path: Path | None = None) -> Prices:
    """The prices file (default results/prices.yaml), validated; PricesError names the file and the key."""
    path = Path(path) if path is not None else PRICES
    raw = load_yaml(path, "prices file", PricesError, limit=2**20)
    if not isinstance(raw, dict):
        raise PricesError(f"{path}: a prices file is a YAML mapping with currency, prices and finetunes")
    try:
        data = _Prices.model_validate(raw)
    except ValidationError as exc:
        raise PricesError(f"{path}: invalid prices file: " + "; ".join(schema_problems(exc, _Prices, "a prices file"))
                          ) from None
    seen: set[str] = set()
    for entry in data.prices:
        if entry.gpu.upper() in seen:
            raise PricesError(f"{path}: gpu {entry.gpu!r} has two prices; keep one")
        seen.add(entry.gpu.upper())
    return Prices(path, data.currency, tuple(data.prices), tuple(data.finetunes))


def usd_per_1k_images(images_per_s: float | None, gpus: int, price: Price | None) -> float | None:
    """Dollars per 1,000 training images at `images_per_s` on `gpus` GPUs; None without a speed or a price."""
    if price is None or not images_per_s or images_per_s <= 0:
        return None
    return gpus * price.usd_per_gpu_hour / (images_per_s * 3600) * 1000


def finetune_hours(images_per_s: float | None, finetune: Finetune | None) -> float | None:
    """Hours of a task's fine-tune at `images_per_s` (training only: no evaluation, loading or checkpoints)."""
    if finetune is None or not images_per_s or images_per_s <= 0:
        return None
    return finetune.images / images_per_s / 3600


def finetune_usd(hours: float | None, gpus: int, price: Price | None) -> float | None:
    return None if hours is None or price is None else hours * gpus * price.usd_per_gpu_hour


@dataclass(frozen=True)
class CellCost:
    """A cell's cost at its measured images/s on its GPUs (the report's Cost table and the results table's columns)."""
    gpus: int
    price: Price
    usd_per_1k_images: float | None
    finetune_hours: float | None
    finetune_usd: float | None


def cell_cost(spec: dict, images_per_s: float | None, prices: Prices) -> CellCost | None:
    """What a cell of `spec` costs at `images_per_s`; None when its GPU has no sourced price."""
    price = prices.price(str(spec.get("gpu") or ""))
    if price is None:
        return None
    gpus = cell_gpus(spec)
    hours = finetune_hours(images_per_s, prices.finetune(spec.get("task")))
    return CellCost(gpus, price, usd_per_1k_images(images_per_s, gpus, price), hours,
                    finetune_usd(hours, gpus, price))
