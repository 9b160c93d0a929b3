"""What a configuration costs, from measured or documented images/s and a sourced GPU-hour price (harness/prices.py):
dollars per 1,000 images and the time and dollars of the task's fine-tune. Two tables: a report's speed cells
(measured beside documented) and the guide's own speed tables (`harness cost`, reports/cost/guide.md)."""

from __future__ import annotations

from .. import outputs
from ..outputs import table_cell
from ..prices import Prices, cell_cost, finetune_hours, finetune_usd, usd_per_1k_images
from .documented import RefRow


def _money(value: float | None) -> str:
    return "-" if value is None else (f"${value:,.2f}" if value >= 0.995 else f"${value:.3f}")


def _hours(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f} h" if value >= 1 else f"{value * 60:.1f} min")


def _finetune_text(hours: float | None, usd: float | None) -> str:
    return "-" if hours is None else f"{_hours(hours)}, {_money(usd)}"


def measured_costs(rows: list[dict], refs: dict[str, RefRow], prices: Prices) -> list[list[str]]:
    """A table row per finished cell (speed or accuracy) with a measured images/s whose GPU has a price: $/1k images
    and the task's fine-tune at that speed, and the documented row's $/1k images beside it when the cell names one."""
    table = []
    for row in rows:
        spec, metrics = row["spec"], row.get("metrics") or {}
        images = metrics.get("images_per_s")
        paid = cell_cost(spec, images, prices) if row["status"] == "ok" and images else None
        if paid is None:
            continue
        ref = refs.get(spec.get("reference") or "")
        documented = ref.values.get("images_per_s") if ref is not None else None
        doc_price = prices.price(ref.gpu) if ref is not None and ref.gpu else None
        table.append([str(row.get("cell", "?")), table_cell(spec.get("strategy")), table_cell(spec.get("attention")),
                      table_cell(spec.get("precision")), f"{paid.gpus}x {table_cell(spec.get('gpu'))}",
                      f"{images:.2f}", f"${paid.price.usd_per_gpu_hour:.3f}", _money(paid.usd_per_1k_images),
                      _finetune_text(paid.finetune_hours, paid.finetune_usd),
                      _money(usd_per_1k_images(documented.value, ref.gpus, doc_price)) if documented else "-"])
    return table


def guide_costs(refs: dict[str, RefRow], prices: Prices) -> list[list[str]]:
    """A table row per documented speed row of the guide: its images/s on its GPUs at its GPU's price."""
    table = []
    for ref in sorted(refs.values(), key=lambda r: (r.table, r.key)):
        documented = ref.values.get("images_per_s")
        price = prices.price(ref.gpu) if ref.gpu else None
        if documented is None:
            continue
        s = ref.settings
        attention = "flash" if s.get("flash_attention") else "eager"
        table.append([table_cell(ref.table), f"`{ref.key}`", table_cell(s.get("strategy")), attention,
                      table_cell(s.get("precision", "?")), f"{ref.gpus}x {ref.gpu}", documented.text(3),
                      f"${price.usd_per_gpu_hour:.3f} ({table_cell(price.machine)})" if price else "no price",
                      _money(usd_per_1k_images(documented.value, ref.gpus, price)),
                      _finetune_text(hours := finetune_hours(documented.value, prices.finetune(ref.task)),
                                     finetune_usd(hours, ref.gpus, price))])
    return table


def sources(prices: Prices) -> list[str]:
    """One line per price and fine-tune: what it is and where it comes from."""
    lines = [f"{p.gpu}: {p.machine} ({p.gpus} GPUs) ${p.usd_per_hour:g}/h in {p.region}, {p.source}; read {p.date}"
             for p in prices.prices]
    lines += [f"{f.task} fine-tune: {f.examples} examples x {f.epochs:g} epoch(s), {f.source}" for f in prices.finetunes]
    return [table_cell(line) for line in lines]


def guide_report(refs: dict[str, RefRow], prices: Prices) -> str:
    """reports/cost/guide.md: what each documented configuration of the guide's speed tables costs."""
    head = ["table", "documented row", "strategy", "attention", "precision", "GPUs", "images/s (documented)",
            "price per GPU-hour", "$ per 1,000 images", "DocVQA fine-tune (time, $)"]
    lines = ["# What the guide's documented configurations cost", "",
             "The guide's speed tables (images/s on 8, 16 or 32 GPUs) at pay-as-you-go GPU-hour prices of the machines "
             "the guide recommends. $ per 1,000 images = GPUs x price per GPU-hour / (images/s x 3600) x 1000; the "
             "fine-tune is the recipe's DocVQA run (its training examples x epochs at the documented images/s; "
             "training only: no loading, evaluation or checkpoints). Prices are list prices of one region on the "
             "date given: a reservation, spot capacity or another region changes every dollar figure by the same "
             "factor, never the order.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in guide_costs(refs, prices)]
    lines += ["", "## Sources", ""] + [f"- {line}" for line in sources(prices)]
    missing = sorted({r.gpu for r in refs.values() if r.gpu and "images_per_s" in r.values} -
                     {r.gpu for r in refs.values() if r.gpu and prices.price(r.gpu)})
    if missing:
        lines += ["", "No sourced price, so no cost: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def write_guide_report(out, refs: dict[str, RefRow], prices: Prices):
    outputs.check(out)
    return outputs.write(out, guide_report(refs, prices), marked=True)
