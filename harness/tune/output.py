"""What `tune` writes: the grid of the winners (`matrices/tuned/<grid>-<gpu>.yaml`, which `run` and `plan` take) and
the "recipe vs tuned" report (markdown), from the search's record (harness/tune/search.py)."""

from __future__ import annotations

from pathlib import Path

from harness.grid.file import Grid
from training_core.spec import RunSpec

from . import steptime
from .candidates import changes

SAME_MODEL = ("A tuned cell changes only the engine, activation checkpointing, per-device micro-batch (gradient "
              "accumulation keeps the global batch) and attention kernel: global batch, optimizer, schedule, "
              "precision, strategy, data, seed and recipe revision are the recipe cell's, so it trains the same model "
              "and its accuracy stays comparable.")
HARDWARE = ("gpu", "nodes", "gpus_per_node", "run_id")


def _winner(entry: dict):
    return next((j for j in entry["judged"] if j.candidate.spec.run_id == entry.get("winner")), None)


def _recipe(entry: dict):
    return next(j for j in entry["judged"] if j.recipe)


def tuned_grid(grid: Grid, record: dict, gpu: str) -> str:
    """The winners as a grid file: the recipe grid's hardware and limits, one `include` entry per tuned cell with
    every setting that is not the spec's default, each preceded by a comment naming the cell it was tuned from."""
    import yaml

    defaults = RunSpec().model_dump(mode="json")
    hw = grid.file.hardware
    lines = [f"{MARK} {grid.name}`; {SAME_MODEL}",
             f"name: {grid.name}-tuned-{gpu}",
             "description: " + yaml.safe_dump(f"{grid.name}'s cells in the fastest configuration that fits {gpu} "
                                              f"(harness tune: predicted, then measured in trials)",
                                              default_style='"', width=10_000).strip(),
             "hardware: " + yaml.safe_dump({"gpu": gpu if hw.gpu != "cpu" else "cpu",
                                            "gpus_per_node": hw.gpus_per_node, "nodes": hw.nodes},
                                           default_flow_style=True, width=10_000).strip(),
             "limits: " + yaml.safe_dump(grid.file.limits.model_dump(exclude_none=True), default_flow_style=True,
                                         width=10_000).strip(),
             "include:"]
    count = 0
    for entry in record["cells"]:
        best = _winner(entry)
        if best is None:
            continue
        recipe = _recipe(entry)
        spec = best.candidate.spec.model_dump(mode="json")
        fields = {k: v for k, v in spec.items() if k not in HARDWARE and v != defaults.get(k)}
        fields["gradient_checkpointing"] = spec["gradient_checkpointing"]  # both spellings agree, kept explicit
        speed = (f"{best.trial['images_per_s']:.3g} vs {recipe.trial['images_per_s']:.3g} images/s in trials"
                 if recipe.trial and recipe.trial.get("images_per_s") else "the recipe's trial did not measure")
        lines.append(f"  # cell {entry['cell']} of {grid.name} (recipe {recipe.candidate.spec.run_id}: "
                     f"{recipe.candidate.label}): {changes(recipe.candidate.settings, best.candidate.settings)}; "
                     f"{speed}")
        lines.append("  - " + yaml.safe_dump(fields, default_flow_style=True, sort_keys=False, width=10_000).strip())
        count += 1
    if not count:
        lines[-1] = "include: []  # no cell has a measured winner"
    return "\n".join(lines) + "\n"


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.3g} GiB"


def _rank(values: list[float | None]) -> list[str]:
    known = sorted(v for v in values if v is not None)
    return ["-" if v is None else str(known.index(v) + 1) for v in values]


def report(grid: Grid, record: dict, gpu: str) -> str:
    """The "recipe vs tuned" markdown: per cell the recipe's and the winner's images/s, speedup, peaks, what changed;
    every candidate tried with its predicted and measured rank; the model's rates, fitted scales and rank
    correlation; what was dropped and why."""
    cpu = gpu.lower() == "cpu"
    out = [f"# Tuning {grid.name} for {gpu}" + (" (predicted: nothing measured)" if record["predict_only"] else ""), "",
           f"{SAME_MODEL}", "",
           f"Search: {sum(e['summary']['candidates'] for e in record['cells'])} candidates over "
           f"{len(record['cells'])} cell(s), {record.get('trials_measured', 0)} measured trial(s), "
           f"{record.get('seconds', 0):.0f} s." + (" Predictions only (`--predict-only`): nothing was run."
                                                      if record["predict_only"] else "")
           + (" Interrupted: the cells after the one in flight were not tuned." if record.get("interrupted") else ""),
           ""]
    if cpu and not record["predict_only"]:
        out += ["Trials ran on a CPU: their images/s are this CPU's (gloo, no GPU), and the memory check is the CPU "
                "allocator's peak over two real steps; they say nothing of a GPU's speeds.", ""]
    if record["predict_only"]:
        out += ["## Recipe vs the best predicted (predictions, not measurements)", "",
                "| cell | recipe | predicted step (s) | recipe fits? | best predicted | predicted step (s) | predicted peak "
                "| predicted speedup | what changed |", "|---|---|---|---|---|---|---|---|---|"]
        for entry in record["cells"]:
            recipe = _recipe(entry)
            best = next((j for j in entry["judged"] if j.fits and j.seconds is not None), None)
            r_step = "-" if recipe.seconds is None else f"{recipe.seconds:.3g}"
            if best is None:
                out.append(f"| {entry['cell']} | {recipe.candidate.label} | {r_step} | {recipe.why or '-'} | nothing "
                           "fits | - | - | - | - |")
                continue
            speedup = f"{recipe.seconds / best.seconds:.2f}x" if recipe.seconds else "-"
            out.append(f"| {entry['cell']} | {recipe.candidate.label} | {r_step} | {recipe.why or '-'} | "
                       f"{best.candidate.label} | {best.seconds:.3g} | {_gib(best.peak)} | {speedup} | "
                       f"{changes(recipe.candidate.settings, best.candidate.settings)} |")
        out.append("")
    if not record["predict_only"]:
        out += ["## Recipe vs tuned", "",
                "| cell | recipe | images/s | tuned | images/s | speedup | peak (predicted / measured) | what changed |",
                "|---|---|---|---|---|---|---|---|"]
        for entry in record["cells"]:
            recipe, best = _recipe(entry), _winner(entry)
            r_ips = (recipe.trial or {}).get("images_per_s")
            r_text = f"{r_ips:.3g}" if r_ips else "-"
            if best is None:
                out.append(f"| {entry['cell']} | {recipe.candidate.label} | {r_text} | no measured candidate "
                           f"fits | - | - | - | - |")
                continue
            b_ips = best.trial["images_per_s"]
            speedup = f"{b_ips / r_ips:.2f}x" if r_ips else "-"
            out.append(f"| {entry['cell']} | {recipe.candidate.label} | {r_text} | "
                       f"{best.candidate.label} | {b_ips:.3g} | {speedup} | {_gib(best.peak)} / "
                       f"{_gib(best.trial.get('measured_peak_bytes'))} ({best.trial.get('peak_kind') or '-'}) | "
                       f"{changes(recipe.candidate.settings, best.candidate.settings)} |")
        out.append("")
    for entry in record["cells"]:
        s = entry["summary"]
        out += [f"## Cell {entry['cell']}: candidates", "",
                f"Budget {_gib(s['budget_bytes'])}: {s['rule']}. {s['candidates']} candidates, {s['dropped']} dropped "
                f"by memory (or not estimated); refused by the spec: "
                + ("; ".join(f"{n} x {why}" for why, n in s["refused"].items()) or "none") + ".", "",
                "| candidate | predicted peak | verdict | predicted step (s) | predicted rank | measured images/s | "
                "measured rank | measured peak | status |",
                "|---|---|---|---|---|---|---|---|---|"]
        judged = entry["judged"]
        tried = [j for j in judged if j.trial]
        ranked = [j for j in judged if j.fits and j.seconds is not None]
        p_rank = dict(zip((id(j) for j in ranked), _rank([j.seconds for j in ranked]), strict=True))
        m_rank = dict(zip((id(j) for j in tried),
                          _rank([-(j.trial.get("images_per_s") or 0) or None for j in tried]), strict=True))
        for j in judged:
            t = j.trial or {}
            name = j.candidate.label + (" (recipe)" if j.recipe else "")
            step = "-" if j.seconds is None else f"{j.seconds:.3g}"
            ips = f"{t['images_per_s']:.3g}" if t.get("images_per_s") else "-"
            out.append(f"| {name} | {_gib(j.peak)} | {j.why} | {step} | {p_rank.get(id(j), '-')} | "
                       f"{ips} | {m_rank.get(id(j), '-')} | "
                       f"{_gib(t.get('measured_peak_bytes'))} | {t.get('status', 'not tried')} |")
        rho = entry.get("spearman")
        out += ["", f"Rank correlation of predicted and measured step time over this cell's trials: "
                    f"{'not enough trials' if rho is None else f'{rho:+.2f}'}.", ""]
    out += ["## The step-time model", "", steptime.__doc__.strip(), "",
            f"Assumed rates: {record['cells'][0]['summary']['rates'] if record['cells'] else '-'}."]
    scales = record.get("scales")
    if scales:
        out.append("Fitted scales (measured / predicted, per term; 0: the term explained none of the differences): "
                   + ", ".join(f"{k} {v:.3g}" for k, v in scales.items()) + f"; fitted rates: "
                   f"{record.get('fitted_rates', '-')}.")
    rho = record.get("spearman")
    out.append(f"Spearman rank correlation over all {record.get('trials_measured', 0)} measured trials: "
               f"{'not enough trials' if rho is None else f'{rho:+.2f}'}.")
    return "\n".join(out) + "\n"


def summary_record(record: dict) -> dict:
    """The record as JSON (the candidates' dataclasses flattened), kept beside the trials."""
    cells = []
    for entry in record["cells"]:
        recipe = _recipe(entry).candidate.settings
        cells.append({k: v for k, v in entry.items() if k != "judged"}
                     | {"candidates": [j.record(recipe) for j in entry["judged"]]})
    return {k: v for k, v in record.items() if k != "cells"} | {"cells": cells}


MARK = "# written by `python -m harness tune"


def check_grid_out(path: Path) -> None:
    """Refuse, before any work, a tuned-grid path that is not a YAML file name, is a link or a directory, or would
    replace a file tune did not write."""
    from harness.outputs import OutputError

    if path.is_symlink() or path.is_dir():
        raise OutputError(f"--out {path}: is a {'symbolic link' if path.is_symlink() else 'directory'}; give a file "
                          "name ending in .yaml")
    if path.suffix not in (".yaml", ".yml"):
        raise OutputError(f"--out {path}: give a grid file name ending in .yaml")
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
        if not first.startswith(MARK):
            raise OutputError(f"--out {path}: exists and was not written by harness tune; choose another name or move "
                              "it away")


def default_paths(grid: Grid, gpu: str, root: Path) -> tuple[Path, Path]:
    return root / "matrices" / "tuned" / f"{grid.name}-{gpu}.yaml", root / "reports" / "tune" / f"{grid.name}-{gpu}.md"


__all__ = ["check_grid_out", "default_paths", "report", "summary_record", "tuned_grid"]
