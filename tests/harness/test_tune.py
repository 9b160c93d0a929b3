"""Issue 34: `harness tune`, the fastest configuration of each cell that fits, predicted then measured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.tune import steptime
from harness.tune.candidates import enumerate_candidates, micro_batches
from training_core.spec import RunSpec

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


def test_candidates_change_only_what_does_not_change_the_model():
    """Every candidate keeps the cell's global batch, precision, strategy, data, seed, optimizer and revision; the
    spec's refusals (LoRA on ZeRO) are counted with their reason, never candidates; micro-batches divide the batch;
    flash attention is a candidate only on a GPU that has it, in bf16."""
    cell = RunSpec(model="tiny", strategy="lora", precision="bf16", gpu="A100", gpus_per_node=8, global_batch=64,
                   attention="eager", lr=1e-4, seed=3)
    found = enumerate_candidates(cell)
    assert found.candidates[0].spec == cell  # the recipe's own configuration first
    kept = ("global_batch", "precision", "strategy", "data", "seed", "lr", "weight_decay", "lr_warmup_steps",
            "recipe_revision", "task", "model", "lora_rank", "num_crops", "mode", "gpu", "nodes", "gpus_per_node")
    for c in found.candidates:
        assert all(getattr(c.spec, k) == getattr(cell, k) for k in kept), c.label
        assert c.spec.global_batch == c.spec.per_device_batch * c.spec.grad_accum * c.spec.world_size
    engines = {c.settings["engine"] for c in found.candidates}
    assert engines == {"ddp", "fsdp2"}
    assert sum(found.refused.values()) == 3 * 3 * 4 * 3  # zero1-3 x policies x micro-batches x kernels
    assert all("cannot train strategy 'lora'" in why for why in found.refused)
    assert {c.settings["attention"] for c in found.candidates} == {"eager", "sdpa", "flash_attention_2"}
    assert micro_batches(cell, 8) == [1, 2, 4, 8]
    assert micro_batches(cell.model_copy(update={"global_batch": 48}), 8) == [1, 2, 3, 6]
    v100 = cell.model_copy(update={"gpu": "V100", "precision": "fp16", "strategy": "full"})
    assert {c.settings["attention"] for c in enumerate_candidates(v100).candidates} == {"eager"}
    assert "fp16 is not built" not in " ".join(found.refused)  # bf16: FSDP2 is a candidate
    assert any("fsdp2 with precision fp16" in why for why in enumerate_candidates(v100).refused)
    on_cpu = RunSpec(model="tiny", strategy="full", precision="fp32", global_batch=8)
    assert {c.settings["attention"] for c in enumerate_candidates(on_cpu).candidates} == {"sdpa"}
    old = on_cpu.model_copy(update={"recipe_revision": "2024-06"})
    assert {c.settings["engine"] for c in enumerate_candidates(old).candidates} == {"zero2"}


def test_the_step_time_model_states_its_terms_and_the_fit_recovers_known_scales():
    """Fewer recomputed layers, fewer micro-batches and sharded optimizer updates each lower the predicted step; the
    fit recovers the scales of step times made from known ones; Spearman's rank correlation is +1 / -1 for the same /
    reversed order and undefined for fewer than 3 pairs."""
    from training_core.model.presets import preset_dict
    from training_core.trackers.flops import model_shape

    shape = model_shape(preset_dict("phi-3.5-vision"))
    base = RunSpec(model="tiny", strategy="full", precision="bf16", gpu="A100", gpus_per_node=8, global_batch=64)

    def seconds(**change):
        spec = base.model_copy(update=change)
        return steptime.predict(spec, steptime.terms(spec, shape, 2443, 4_150_000_000, 4_150_000_000))

    all_, parts = seconds()
    assert set(parts) == set(steptime.TERM_NAMES) and all(v > 0 for v in parts.values())
    assert seconds(activation_checkpointing="none", gradient_checkpointing=False)[0] < all_
    assert seconds(per_device_batch=4)[0] < all_  # 2 micro-batches instead of 8
    ddp, zero2 = seconds(engine="ddp")[1], seconds(engine="zero2")[1]
    assert ddp["optimizer"] == pytest.approx(8 * zero2["optimizer"], rel=1e-6)  # every value on every rank
    rows = [{"compute": c, "communication": m, "optimizer": o, "micro-batches": b}
            for c, m, o, b in ((1.0, 0.2, 0.1, 0.08), (0.8, 0.4, 0.1, 0.16), (1.3, 0.1, 0.3, 0.04),
                               (0.9, 0.3, 0.2, 0.12), (1.1, 0.0, 0.05, 0.2))]
    truth = {"compute": 2.0, "communication": 0.5, "optimizer": 1.5, "micro-batches": 3.0}
    measured = [sum(truth[k] * r[k] for k in truth) for r in rows]
    assert steptime.fit_scales(rows, measured) == pytest.approx(truth, rel=1e-6)
    assert steptime.fit_scales(rows[:1], measured[:1]) is None
    assert steptime.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert steptime.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert steptime.spearman([1, 2], [1, 2]) is None


def test_a_candidate_predicted_not_to_fit_is_dropped_and_its_larger_micro_batches_are_not_traced(monkeypatch):
    from harness.tune import search

    traced = []

    def fake_predict(cache, spec, data_root):  # memory grows with the micro-batch, more without checkpointing
        traced.append(spec.run_id)
        peak = (2 + spec.per_device_batch * (3 if spec.checkpointing == "none" else 1)) * 2**20
        return {"peak_bytes": peak, "tokens": 100 * spec.per_device_batch, "params": 174_880, "trainable": 174_880}

    monkeypatch.setattr(search.PredictionCache, "predict", fake_predict)
    cell = RunSpec(model="tiny", strategy="full", precision="fp32", global_batch=8, num_crops=4)
    options = search.TuneOptions(memory_gib=8 / 1024, engines=("ddp",), policies=("all", "none"))
    judged, summary = search.judge_cell(cell, options, progress=lambda line: None)
    budget = 8 * 2**20
    for j in judged:
        if j.fits:
            assert j.peak * 1.10 <= budget
        elif j.peak is not None:
            assert j.peak * 1.10 > budget
    none = {j.candidate.settings["per_device_batch"]: j for j in judged
            if j.candidate.settings["activation_checkpointing"] == "none"}
    assert none[1].fits and not none[2].fits  # 5 MiB x 1.1 fits 8 MiB, 8 MiB x 1.1 does not
    assert none[4].peak is None and "smaller micro-batch" in none[4].why  # never traced
    assert summary["dropped"] == sum(1 for j in judged if not j.fits)
    fitting = [j for j in judged if j.fits]
    assert judged[:len(fitting)] == fitting  # the fitting ones first, fastest predicted first
    assert [j.seconds for j in fitting] == sorted(j.seconds for j in fitting)


def harness(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})



def test_the_prediction_cache_is_read_once_and_a_new_trace_is_appended(tmp_path, monkeypatch):
    """tune's predictions under --data-root: the file is read once per cell (not once per candidate), a cached
    candidate is not traced again, a line cut short by a kill is skipped, a new trace is appended and reused."""
    import types

    from harness.tune.search import PREDICTIONS, PredictionCache, prediction_key

    traced = []
    fake = types.SimpleNamespace(estimate_cell=lambda spec, root: traced.append(spec) or {
        "peak_bytes": 1000 + len(traced), "phase": "step", "tokens": 1, "params": 2, "trainable": 3, "notes": []})
    monkeypatch.setitem(sys.modules, "training_core.estimate.trace", fake)
    old, new = RunSpec(model="tiny", strategy="full", global_batch=8), RunSpec(model="tiny", strategy="lora")
    path = tmp_path / PREDICTIONS
    path.write_text(json.dumps({"key": prediction_key(old), "predicted": {"peak_bytes": 7}}) + "\n" + '{"key": "cut')
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k))
    cache = PredictionCache(path)
    assert cache.predict(old, tmp_path)["peak_bytes"] == 7 and traced == []
    assert cache.predict(new, tmp_path)["peak_bytes"] == 1001 and cache.predict(new, tmp_path)["peak_bytes"] == 1001
    assert len(traced) == 1 and reads == [path]
    assert PredictionCache(path).entries[prediction_key(new)]["peak_bytes"] == 1001  # appended for the next run,
    assert path.read_text().splitlines()[1] == '{"key": "cut'  # on a line of its own after the torn one
    cache.predict(RunSpec(model="tiny", strategy="qlora"), tmp_path)
    assert len(path.read_text().splitlines()) == 4 and "" not in path.read_text().splitlines()  # no blank line

@pytest.mark.slow
def test_tune_on_this_cpu_beats_the_recipe_within_the_budget_and_its_grid_reruns(tmp_path):
    """The tune_cpu grid (tiny, one process, full fine-tuning, fp32; the recipe's ZeRO-2 with checkpointing on every
    layer at micro-batch 1) under a budget of 8 MiB, where no checkpointing fits at micro-batch 1 and 2 (predicted 4.5
    and 6.3 MiB) but not at 4 (10.1 MiB). Tune must pick a configuration measured faster than the recipe's trial of
    the same run by more than 1.15x (1.47x here: ddp without checkpointing at micro-batch 2, 45.8 vs 31.0 images/s),
    whose measured CPU allocator peak fits the budget, and that was predicted to fit. A first run stopped by Ctrl-C
    after its first trial keeps that trial's row and the next run does not run it again; a further tune reuses every
    trial (no new row); the tuned grid runs with `harness run` to images/s within noise of its trial."""
    results, out, report = tmp_path / "runs", tmp_path / "tuned.yaml", tmp_path / "tune.md"
    args = ["tune", "tune_cpu", "--memory-gib", 8 / 1024, "--engine", "ddp", "--engine", "zero2",
            "--checkpointing", "all", "--checkpointing", "none", "--trials", 2, "--results", results, "--out", out,
            "--report", report, "--data-root", tmp_path / "est"]
    store = results / "tune_cpu-tune" / "cpu" / "rows.jsonl"
    # Ctrl-C once the first trial has its row: the run stops (130), what finished stays
    interrupted = subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 600
    while not (store.exists() and store.read_text().strip()) and time.monotonic() < deadline:
        assert interrupted.poll() is None, interrupted.stdout.read()[-3000:]
        time.sleep(0.5)
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=300) == 130, interrupted.stdout.read()[-3000:]
    kept = [json.loads(line) for line in store.read_text().splitlines()]
    assert kept and kept[0]["status"] == "ok"
    first = harness(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "trains the same model" in first.stdout
    record = json.loads((results / "tune_cpu-tune" / "tune-cpu.json").read_text())
    (cell,) = record["cells"]
    candidates = {c["run_id"]: c for c in cell["candidates"]}
    best = candidates[cell["winner"]]
    recipe = next(c for c in cell["candidates"] if c["recipe"])
    speedup = best["trial"]["images_per_s"] / recipe["trial"]["images_per_s"]
    print(f"tuned {best['label']}: {speedup:.2f}x over the recipe's {recipe['label']}")
    assert speedup > 1.15
    assert best["predicted_fits"] and best["trial"]["measured_fits"]
    assert best["trial"]["measured_peak_bytes"] * 1.10 <= 8 * 2**20
    for c in cell["candidates"]:  # no trial of a candidate predicted not to fit, but the recipe's own
        assert c["trial"] is None or c["predicted_fits"] or c["recipe"], c["label"]
    checkpointing_none = [c for c in cell["candidates"] if c["settings"]["engine"] == "ddp"
                          and c["settings"]["activation_checkpointing"] == "none"]
    assert {c["predicted_fits"] for c in checkpointing_none} == {True, False}  # fits at some micro-batches only
    assert "## Recipe vs tuned" in report.read_text() and f"{speedup:.2f}x" in report.read_text()
    rows = store.read_text().splitlines()
    finished = [json.loads(line) for line in rows if json.loads(line)["status"] == "ok"]
    assert len({r["run_id"] for r in finished}) == len(finished) == 3  # the interrupted run's trial was not run again

    again = harness(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert store.read_text().splitlines() == rows  # reused

    plan = harness("plan", out)
    assert plan.returncode == 0 and "tune_cpu-tuned-cpu" in plan.stdout, plan.stderr[-2000:]
    rerun = harness("run", out, "--results", results)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (row,) = [json.loads(line) for line in (results / "tune_cpu-tuned-cpu" / "cpu" / "rows.jsonl").read_text()
              .splitlines()]
    assert row["status"] == "ok" and row["spec"]["engine"] == best["settings"]["engine"]
    ratio = row["metrics"]["images_per_s"] / best["trial"]["images_per_s"]
    print(f"the tuned grid's row: {ratio:.2f}x its trial's images/s")
    assert 0.5 < ratio < 2.0  # this machine's noise: 2x between runs


def test_the_winner_is_the_fastest_measured_trial_that_fits_never_an_oom_or_one_predicted_not_to_fit():
    from harness.tune.candidates import Candidate, settings_of
    from harness.tune.search import Judged, winner

    def judged(micro, fits, trial):
        spec = RunSpec(model="tiny", strategy="full", precision="fp32", global_batch=8, per_device_batch=micro,
                       engine="ddp")
        return Judged(Candidate(spec, settings_of(spec)), recipe=False, fits=fits, trial=trial)

    oom = judged(8, True, {"status": "oom", "images_per_s": None, "measured_fits": False})
    too_big = judged(4, False, {"status": "ok", "images_per_s": 90.0, "measured_fits": True})  # never tried, but
    over = judged(2, True, {"status": "ok", "images_per_s": 80.0, "measured_fits": False})  # measured over budget
    ok = judged(1, True, {"status": "ok", "images_per_s": 50.0, "measured_fits": True})
    assert winner([oom, too_big, over, ok]) is ok
    assert winner([oom, over]) is None


def test_a_gpu_trials_fit_is_its_reserved_peak_and_the_context_and_a_spent_budget_runs_nothing(tmp_path):
    """On a GPU a trial fits when its reserved peak (the allocator's, what it holds) + the CUDA context (+ NCCL on
    more than one rank) is within the GPU's memory; with no wall-clock left no trial runs and each says so."""
    from harness.grid.file import load_grid
    from harness.run.options import RunOptions
    from harness.tune.candidates import Candidate, settings_of
    from harness.tune.search import Judged, TuneOptions, read_trial, run_trials
    from training_core.estimate.fit import CONTEXT, NCCL

    spec = RunSpec(model="tiny", strategy="lora", precision="bf16", gpu="H200", gpus_per_node=8, global_batch=64)
    judged = Judged(Candidate(spec, settings_of(spec)), recipe=True, fits=True)
    total = 100 * GIB
    row = {"status": "ok", "metrics": {"images_per_s": 32.0, "peak_mem_reserved_bytes": total - CONTEXT - NCCL,
                                       "peak_mem_allocated_bytes": 50 * GIB}}
    read_trial(judged, row, total, TuneOptions())
    assert judged.trial["measured_fits"] and judged.trial["peak_kind"] == "reserved"
    assert judged.trial["step_s"] == pytest.approx(64 / 32.0)
    row["metrics"]["peak_mem_reserved_bytes"] += 1
    read_trial(judged, row, total, TuneOptions())
    assert judged.trial["measured_fits"] is False
    read_trial(judged, {"status": "oom", "reason": "CUDA out of memory", "metrics": {}}, total, TuneOptions())
    assert judged.trial["status"] == "oom" and judged.trial["measured_fits"] is False

    grid = load_grid(ROOT / "matrices" / "tune_cpu.yaml")
    cell = grid.cells[0].spec
    rows, interrupted, skipped = run_trials(grid, [cell], RunOptions(results=tmp_path), None, None, budget_s=-1)
    assert rows == {} and interrupted is None and skipped == [cell.run_id]
    assert not (tmp_path / "tune_cpu-tune" / "cpu").exists()  # nothing ran
