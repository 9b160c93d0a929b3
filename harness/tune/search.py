"""One `tune` run: for each selected cell, enumerate the candidates, predict their memory and drop those that do not
fit, rank the rest by the step-time model, run short trials of the best as ordinary cells, and pick the fastest
measured candidate whose measured peak fits (harness/tune/__init__.py has the pipeline).

Trials are cells of their own grid (`<grid>-tune`, written to `<results>/<grid>-tune/trials.yaml`) in their own
results group, run one by one through the runner: each leaves a row, a rerun reuses the finished ones, an OOM is an
`oom` row and the search goes on, Ctrl-C stops after the row of the trial in flight. On a CPU the measured peak is
the CPU allocator's over two real steps (`python -m training_core.estimate.validate`, every rank), since a CPU row
has only the process's RSS; on a GPU it is the row's reserved peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.grid.file import Grid
from harness.grid.select import matches
from harness.paths import ROOT
from training_core.errors import UserError
from training_core.estimate.fit import CONTEXT, GIB, MARGIN_RULE, NCCL, SLACK, needed_bytes
from training_core.gpus import memory_bytes
from training_core.spec import RunSpec

from . import steptime
from .candidates import Candidate, changes, enumerate_candidates, settings_of

CPU_RULE = f"fits if the CPU allocator's peak x {1 + SLACK:.2f} <= --memory-gib (no CUDA context, no NCCL)"
TRIAL_WARMUP, TRIAL_MEASURED = 2, 4  # the most steps a trial takes (the cell's own when fewer)


class TuneError(UserError):
    """A tune request that cannot be carried out, and why."""


@dataclass(frozen=True)
class TuneOptions:
    gpu: str | None = None  # judge and rank for this GPU (default: the cell's)
    memory_gib: float | None = None  # the memory budget (default: the GPU's catalogue memory)
    trials: int = 3  # measured candidates per cell beside the recipe's own configuration
    engines: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    max_micro_batch: int = 8
    predict_only: bool = False
    budget_s: float | None = None  # wall clock for the trials
    data_root: Path = ROOT / "build" / "estimate"


@dataclass
class Judged:
    """A candidate with its prediction and verdict (and, once run, its trial)."""
    candidate: Candidate
    recipe: bool
    peak: int | None = None
    fits: bool | None = None
    why: str = ""
    seconds: float | None = None
    parts: dict = field(default_factory=dict)
    trial: dict | None = None  # run_id, status, images_per_s, step_s, measured_peak, measured_fits, reason

    def record(self, recipe_settings: dict) -> dict:
        return {"settings": self.candidate.settings, "label": self.candidate.label, "recipe": self.recipe,
                "changes": changes(recipe_settings, self.candidate.settings), "run_id": self.candidate.spec.run_id,
                "predicted_peak_bytes": self.peak, "predicted_fits": self.fits, "why": self.why,
                "predicted_step_s": self.seconds, "predicted_parts": self.parts, "trial": self.trial}


def budget(spec: RunSpec, options: TuneOptions) -> tuple[int, str]:
    """(bytes, the rule) a candidate of `spec` must fit."""
    if spec.gpu.lower() == "cpu":
        if options.memory_gib is None:
            raise TuneError("tune on a CPU cell needs --memory-gib (the budget the CPU allocator's peak must fit)")
        return int(options.memory_gib * GIB), CPU_RULE
    total = int(options.memory_gib * GIB) if options.memory_gib else memory_bytes(spec.gpu)
    if total is None:
        raise TuneError(f"tune: GPU {spec.gpu!r} is not in the catalogue (training_core/gpus.py); give --memory-gib")
    return total, MARGIN_RULE


def fits(peak: int, spec: RunSpec, total: int) -> tuple[bool, int]:
    needed = int(peak * (1 + SLACK)) if spec.gpu.lower() == "cpu" else needed_bytes(peak, spec.world_size)
    return needed <= total, needed


PREDICTIONS = "tune-predictions.jsonl"  # under --data-root: one line per traced candidate, reused by later runs


def prediction_key(spec: RunSpec) -> str:
    """What a trace depends on: the spec, but of the GPU only whether it is one (AdamW's foreach path) and of the
    kernel not flash against sdpa (flash-attn is traced as sdpa's fused kernel)."""
    data = spec.model_dump(mode="json")
    data["gpu"] = "cpu" if spec.gpu.lower() == "cpu" else "cuda"
    if data["attention"] == "flash_attention_2":
        data["attention"] = "sdpa"
    return json.dumps(data, sort_keys=True)


class PredictionCache:
    """The predictions traced before (PREDICTIONS under --data-root), read once; a new trace is added to it and
    appended to the file. A line cut short by a kill is skipped (that candidate is traced again)."""

    def __init__(self, path: Path):
        self.path, self.entries = path, {}
        if path.is_file() and not path.is_symlink():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str) \
                        and isinstance(entry.get("predicted"), dict):
                    self.entries[entry["key"]] = entry["predicted"]

    def predict(self, spec: RunSpec, data_root: Path) -> dict:
        """The estimator's prediction of a candidate: cached, else traced now and kept."""
        from training_core.estimate.trace import estimate_cell

        key = prediction_key(spec)
        if key in self.entries:
            return self.entries[key]
        predicted = estimate_cell(spec, data_root)
        kept = {k: predicted[k] for k in ("peak_bytes", "phase", "tokens", "params", "trainable")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as out:
            torn = out.seek(0, os.SEEK_END) > 0 and out.seek(-1, os.SEEK_END) >= 0 and out.read(1) != b"\n"
            out.write((b"\n" if torn else b"") + json.dumps({"key": key, "predicted": kept}).encode() + b"\n")
        self.entries[key] = kept
        return predicted


def judge_cell(spec: RunSpec, options: TuneOptions, progress=print) -> tuple[list[Judged], dict]:
    """Every candidate of the cell with its predicted peak and verdict, and the fitting ones ranked by predicted step
    time (fastest first; those that do not fit after). Micro-batches are traced smallest first: once one does not fit,
    the larger ones of that engine, checkpointing and kernel are dropped without a trace (memory grows with it)."""
    from training_core.strategies.base import model_config
    from training_core.trackers.flops import model_shape

    total, rule = budget(spec, options)
    found = enumerate_candidates(spec, options.engines or None, options.policies or None, options.max_micro_batch)
    shape = model_shape(model_config(spec).to_dict())
    judged = [Judged(c, recipe=i == 0) for i, c in enumerate(found.candidates)]
    too_big: set = set()
    cache = PredictionCache(options.data_root / PREDICTIONS)
    for j in sorted(judged, key=lambda j: j.candidate.settings["per_device_batch"]):
        s = j.candidate.settings
        family = (s["engine"], s["fsdp2_reshard"], s["activation_checkpointing"], s["attention"])
        if family in too_big and not j.recipe:
            j.fits, j.why = False, "a smaller micro-batch of this configuration does not fit"
            continue
        try:
            predicted = cache.predict(j.candidate.spec, options.data_root)
        except Exception as exc:  # noqa: BLE001 - one candidate's failure is said, the search goes on
            j.fits, j.why = False, f"not estimated: {type(exc).__name__}: {exc}"
            continue
        j.peak = predicted["peak_bytes"]
        ok, needed = fits(j.peak, j.candidate.spec, total)
        j.fits = ok
        j.why = f"{'fits' if ok else 'does not fit'} ({needed / GIB:.3g} of {total / GIB:.3g} GiB)"
        if not ok:
            too_big.add(family)
        # the step time of every traced candidate (the recipe's too, fitting or not: its trial is measured beside)
        sequence = max(1, predicted["tokens"] // j.candidate.spec.per_device_batch)
        t = steptime.terms(j.candidate.spec, shape, sequence, predicted["params"], predicted["trainable"])
        j.seconds, j.parts = steptime.predict(j.candidate.spec, t)
        progress(f"    {j.candidate.label}: {j.peak / GIB:.3g} GiB ({'fits' if ok else 'does not fit'}), "
                 f"{j.seconds:.3g} s per step predicted")
    judged.sort(key=lambda j: (not j.fits, j.seconds if j.seconds is not None else float("inf")))
    summary = {"budget_bytes": total, "rule": rule, "candidates": len(judged),
               "refused": dict(found.refused), "dropped": sum(1 for j in judged if not j.fits),
               "rates": steptime.rates_for(spec).describe()}
    return judged, summary


# ----------------------------------------------------------------------------------------------------- trials
def trial_spec(spec: RunSpec) -> RunSpec:
    return spec.model_copy(update={"warmup_steps": min(spec.warmup_steps, TRIAL_WARMUP),
                                   "measured_steps": min(spec.measured_steps, TRIAL_MEASURED)})


def trial_fields(spec: RunSpec) -> dict:
    """A trial's cell as a grid writes it: every field but the run id and the hardware (the grid's)."""
    data = RunSpec.model_validate(spec.model_dump()).model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in ("gpu", "nodes", "gpus_per_node", "run_id")}


def write_trial_grid(grid: Grid, specs: list[RunSpec], results: Path, gpu: str | None = None) -> Path:
    """The trials as a grid file of their own: `<results>/<grid>-tune/trials.yaml` (on `gpu` when tuning for
    another GPU than the grid's)."""
    import yaml

    from harness import outputs

    name = f"{grid.name}-tune"
    hw = grid.file.hardware
    body = {"name": name, "description": f"tune's measured trials of {grid.name} (written by harness tune)",
            "hardware": {"gpu": gpu or hw.gpu, "gpus_per_node": hw.gpus_per_node, "nodes": hw.nodes},
            "limits": grid.file.limits.model_dump(exclude_none=True), "include": [trial_fields(s) for s in specs]}
    path = results / name / "trials.yaml"
    outputs.write(path, yaml.safe_dump(body, sort_keys=False, width=200))
    return path


def run_trials(grid: Grid, trials: list[RunSpec], run_options, machine, console, budget_s: float | None,
               gpu: str | None = None):
    """Run each trial as a cell (one runner pass per trial, so a wall-clock budget can stop between them). Returns
    (rows by run_id, interrupted_by or None, trials not run for the budget)."""
    from harness.grid.file import load_grid
    from harness.run.prepare import prepare
    from harness.run.runner import Runner

    path = write_trial_grid(grid, trials, run_options.results, gpu)
    trial_grid = load_grid(path, machine=machine)
    wanted = {s.run_id for s in trials}
    cells = [c for c in trial_grid.cells if c.runnable and c.spec.run_id in wanted]
    refusal = prepare(trial_grid, run_options, machine)
    if refusal:
        raise TuneError(refusal)
    started, skipped, store = time.monotonic(), [], None
    for cell in cells:
        if budget_s is not None and time.monotonic() - started > budget_s:
            skipped.append(cell.spec.run_id)
            continue
        trial_grid.cells = [cell]
        runner = Runner(trial_grid, run_options, machine, console)
        outcome = runner.run()
        store = outcome.store
        if outcome.interrupted_by is not None:
            return _rows(store), outcome.interrupted_by, skipped
    return (_rows(store) if store is not None else {}), None, skipped


def _rows(store) -> dict[str, dict]:
    rows, _ = store.latest()
    return {r["run_id"]: r for r in rows if "run_id" in r}


def measured_cpu_peak(spec: RunSpec, data_root: Path, timeout_s: float = 900) -> int | None:
    """The CPU allocator's peak of two real steps of `spec` (the largest rank's), or None when the check failed."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec.model_dump(mode="json")))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={spec.world_size}", "-m", "training_core.estimate.validate",
                              "--spec", str(path), "--data-root", str(data_root)],
                             capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith('{"ranks"')]
    if out.returncode != 0 or not lines:
        return None
    return max(json.loads(lines[-1])["ranks"])


def read_trial(j: Judged, row: dict | None, total: int, options: TuneOptions) -> None:
    spec = j.candidate.spec
    trial = trial_spec(spec)
    if row is None:
        j.trial = {"run_id": trial.run_id, "status": "not run", "reason": "not run (the budget ran out)"}
        return
    m = row.get("metrics") or {}
    ips = m.get("images_per_s")
    j.trial = {"run_id": trial.run_id, "status": row.get("status"), "reason": row.get("reason") or "",
               "images_per_s": ips, "step_s": spec.global_batch / ips if ips else None,
               "measured_peak_bytes": None, "measured_fits": None, "peak_kind": None}
    if row.get("status") != "ok":
        j.trial["measured_fits"] = False
        return
    if spec.gpu.lower() != "cpu":
        peak = m.get("peak_mem_reserved_bytes") or m.get("peak_mem_allocated_bytes")
        kind = "reserved" if m.get("peak_mem_reserved_bytes") else "allocated"
        if peak is not None:
            needed = peak + CONTEXT + (NCCL if spec.world_size > 1 else 0)
            j.trial.update(measured_peak_bytes=peak, peak_kind=kind, measured_fits=needed <= total)


def check_cpu_peaks(ordered: list[Judged], total: int, options: TuneOptions, progress) -> None:
    """On a CPU, the measured trials from the fastest down are checked with the allocator until one fits."""
    for j in ordered:
        if j.trial is None or j.trial.get("status") != "ok" or j.candidate.spec.gpu.lower() != "cpu":
            continue
        peak = measured_cpu_peak(trial_spec(j.candidate.spec), options.data_root)
        if peak is None:
            j.trial.update(measured_fits=False, peak_kind="CPU allocator (check failed)")
            continue
        ok = peak * (1 + SLACK) <= total
        j.trial.update(measured_peak_bytes=peak, peak_kind="CPU allocator", measured_fits=ok)
        progress(f"    checked {j.candidate.label}: {peak / GIB:.3g} GiB measured ({'fits' if ok else 'does not fit'})")
        if ok:
            return


def winner(judged: list[Judged]) -> Judged | None:
    """The fastest measured candidate whose measured peak fits (never one predicted not to fit)."""
    done = [j for j in judged if j.fits and j.trial and j.trial.get("status") == "ok" and j.trial.get("measured_fits")
            and j.trial.get("images_per_s")]
    return max(done, key=lambda j: j.trial["images_per_s"]) if done else None


def tune_grid(grid: Grid, filters: dict, options: TuneOptions, run_options=None, machine=None, console=None,
              progress=print) -> dict:
    """The whole search over the grid's selected cells; returns the record the outputs are written from."""
    cells = [c for c in grid.cells if c.runnable and matches(c, filters)]
    record = {"grid": grid.name, "gpu": options.gpu, "predict_only": options.predict_only, "cells": [],
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "interrupted": False}
    started = time.monotonic()
    for cell in cells:
        spec = cell.spec if options.gpu is None else cell.spec.model_copy(update={"gpu": options.gpu})
        spec = RunSpec.model_validate(spec.model_dump())
        progress(f"cell {cell.index}: {settings_of(spec)}")
        judged, summary = judge_cell(spec, options, progress)
        entry = {"cell": cell.index, "spec": spec.model_dump(mode="json"), "summary": summary, "judged": judged}
        record["cells"].append(entry)
        if options.predict_only:
            continue
        recipe = next(j for j in judged if j.recipe)
        chosen = [recipe] + [j for j in judged if j.fits and not j.recipe][:options.trials]
        left = None if options.budget_s is None else max(0.0, options.budget_s - (time.monotonic() - started))
        rows, interrupted, _ = run_trials(grid, [trial_spec(j.candidate.spec) for j in chosen], run_options,
                                          machine, console, left, options.gpu)
        for j in chosen:
            read_trial(j, rows.get(trial_spec(j.candidate.spec).run_id), summary["budget_bytes"], options)
        if spec.gpu.lower() == "cpu":
            ordered = sorted((j for j in chosen if j.fits and j.trial and j.trial.get("images_per_s")),
                             key=lambda j: -j.trial["images_per_s"])
            check_cpu_peaks(ordered, summary["budget_bytes"], options, progress)
            if recipe.trial and recipe.trial.get("status") == "ok" and recipe.trial.get("measured_peak_bytes") is None:
                check_cpu_peaks([recipe], summary["budget_bytes"], options, progress)
        best = winner(chosen)
        entry["winner"] = best.candidate.spec.run_id if best else None
        if interrupted is not None:
            record["interrupted"] = True
            break
    record["seconds"] = round(time.monotonic() - started, 1)
    fit_model(record)
    return record


def fit_model(record: dict) -> None:
    """The step-time model's scales fitted to every measured trial, the rates they imply, and Spearman's rank
    correlation of the prediction (before the fit) with the measurement, per cell and over all trials."""
    parts, measured, predicted = [], [], []
    for entry in record["cells"]:
        pairs = [(j.seconds, j.trial["step_s"], j.parts) for j in entry["judged"]
                 if j.trial and j.trial.get("step_s") and j.seconds is not None]
        entry["spearman"] = steptime.spearman([p for p, _, _ in pairs], [m for _, m, _ in pairs])
        for p, m, part in pairs:
            predicted.append(p)
            measured.append(m)
            parts.append(part)
    record["spearman"] = steptime.spearman(predicted, measured)
    record["trials_measured"] = len(measured)
    record["scales"] = steptime.fit_scales(parts, measured)
    if record["scales"] and record["cells"]:
        rates = steptime.rates_for(RunSpec.model_validate(record["cells"][0]["spec"]))
        record["fitted_rates"] = steptime.fitted_rates(rates, record["scales"]).describe()
