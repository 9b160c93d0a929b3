"""The gate's rules (`--rules RULES.yaml`): a tolerance per metric (relative or absolute), the baseline cell of the
normalised throughput, ordering rules across cells, the memory estimator's allowed error. A rule that would check
nothing (an unknown metric, an ordering that matches no cell, an infinite tolerance) is an error, not a pass."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training_core.errors import UserError
from training_core.result import EXACT, HIGHER, LOWER

from ..readers import load_yaml, schema_problems


class CompareError(UserError):
    pass


NORMALISED = {"images_per_s": "normalized_images_per_s", "images_per_cpu_s": "normalized_images_per_cpu_s"}


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    relative: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)  # above 100% passes anything
    absolute: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    ignore: bool = False


class OrderRule(BaseModel):
    """`metric` must keep `descending` order across the cells named by `by` values (e.g. strategies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str
    by: str
    order: list[str]
    descending: bool = True


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: Tolerance = Tolerance(relative=0.05)
    metrics: dict[str, Tolerance] = {}
    baseline_cell: dict[str, str | int | float | bool] = {}  # for normalised throughput; default: first common cell
    orders: list[OrderRule] = []
    only: list[str] | None = None  # compare only these metrics (plus normalised throughput)
    # the memory estimator's error: |measured allocated peak / predicted - 1| of each current row that has both
    # (`run --estimate`, GPU cells); above it, the check fails
    estimator_error: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    def tolerance(self, metric: str) -> Tolerance:
        return self.metrics.get(metric, self.default)


def load_rules(path: Path | None) -> Rules:
    if path is None:
        return Rules()
    raw = load_yaml(Path(path), "rules file", CompareError, limit=2**20) or {}
    try:
        return Rules.model_validate(raw)
    except ValidationError as exc:
        raise CompareError(f"{path}: invalid rules: " + "; ".join(schema_problems(exc, Rules, "a rules file"))) \
            from None


def check_rules(rules: Rules, current_rows: list[dict]) -> None:
    """A rule that names a metric the gate does not compare, or an ordering whose `by` key or values match no cell,
    would check nothing: each is an error, not a pass."""
    known = HIGHER | LOWER | EXACT | set(NORMALISED.values())
    named = [(f"rules.metrics.{m}", m) for m in rules.metrics] + [(f"rules.only[{i}]", m)
                                                                   for i, m in enumerate(rules.only or [])]
    named += [(f"rules.orders[{i}].metric", o.metric) for i, o in enumerate(rules.orders)]
    for where, metric in named:
        if metric not in known:
            raise CompareError(f"{where}: {metric!r} is not a metric the gate compares (it knows: "
                               f"{', '.join(sorted(known))})")
    specs = [r.get("spec") or {} for r in current_rows]
    for i, order in enumerate(rules.orders):
        if not any(order.by in spec for spec in specs):
            raise CompareError(f"rules.orders[{i}].by: no cell's spec has {order.by!r}")
        values = {str(spec.get(order.by)) for spec in specs}
        missing = [v for v in order.order if str(v) not in values]
        if len(missing) > len(order.order) - 2:
            raise CompareError(f"rules.orders[{i}].order: {missing} match no cell's {order.by} (the cells have: "
                               f"{', '.join(sorted(values))}); an order needs two of them")
