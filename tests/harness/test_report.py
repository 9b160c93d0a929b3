import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.render import render
from harness.store import RowStore

ROOT = Path(__file__).resolve().parents[2]
A100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 85899345920}
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984}


def _env(gpu, world):
    return {"git_sha": "abc123", "git_dirty": False, "python": "3.11.7", "torch": "2.13.0", "transformers": "5.24.0",
            "gpus": [gpu] * 8 if gpu else [], "gpu_count": 8 if gpu else 0, "world_size": world, "driver": "570.1",
            "cuda": "12.8", "hostname": "node-1"}


def _row(cell, strategy, attention, images, reference, gpu=A100, world=8, status="ok", model="phi-3-vision-128k",
         mem_gb=None, mfu=None, reason=None, nodes=1, revision="2024-06"):
    metrics = {"images_per_s": images, "measured_steps": 5} if images else {}
    if mem_gb:
        metrics["peak_mem_reserved_bytes"] = int(mem_gb * 2**30)
    if mfu:
        metrics["mfu"] = mfu
    spec = {"task": "docvqa", "data": "synthetic", "model": model, "weights": "random", "strategy": strategy,
            "precision": "bf16", "attention": attention, "num_crops": 16, "global_batch": 64, "per_device_batch": 1,
            "nodes": nodes, "gpus_per_node": 8, "mode": "throughput", "reference": reference, "lr": 4e-5,
            "epochs": 1.0, "recipe_revision": revision}  # measured as the guide's table was (the 2024-06 recipe)
    return {"run_id": f"id{cell}", "matrix": "a100_speed", "cell": cell, "status": status, "reason": reason,
            "spec": spec, "metrics": metrics, "env": _env(gpu, world), "log": f"/logs/{cell}.txt"}


ROWS = [
    _row(0, "full", "eager", 5.2, "a100/full/1node/eager", mem_gb=40.0, mfu=0.17),
    _row(1, "full", "flash_attention_2", 7.0, "a100/full/1node/flash", mem_gb=35.0, mfu=0.23),
    _row(2, "frozen_vision", "flash_attention_2", 40.0, "a100/frozen_vision/1node/flash", mem_gb=20.0),
    _row(3, "lora", "eager", 6.0, "a100/lora/1node/eager", gpu=H100, mem_gb=30.0),
    _row(4, "qlora", "eager", None, "a100/qlora/1node/eager", status="oom",
         reason="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    _row(5, "full", "flash_attention_2", None, "a100/full/2node/flash", status="timeout",
         reason="killed after the cell's timeout of 3600 s", nodes=2, world=16),
    _row(6, "lora", "flash_attention_2", 12.0, "a100/lora/1node/flash", model="tiny", mem_gb=10.0),
]


@pytest.fixture
def group(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    for row in ROWS:
        store.append(row)
    return store.directory


def _table(text: str, heading: str) -> list[list[str]]:
    section = text.split(f"## {heading}")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[1:]]


def test_speed_table_statuses_and_reasons(group, tmp_path):
    text = render(group, tmp_path / "report.md").read_text()
    table = {r[0]: r for r in _table(text, "Speed")}
    # cell 0: 5.2 vs 5.041 documented (+3.2%): within tolerance
    assert table["0"][7:10] == ["5.200", "5.041", "+3.2%"] and table["0"][-1] == "within tolerance"
    assert table["0"][12:14] == ["40.00", "~42"] and table["0"][14] == "17.0%"
    # cell 1: 7.0 vs 8.657 (-19.1%): worse; speedup measured against cell 0 and documented 1.72x
    assert table["1"][9] == "-19.1%" and table["1"][-1] == "worse"
    assert table["1"][10:12] == ["1.35x", "1.72x"]
    # cell 2: 40 vs 31.736 (+26%): better
    assert table["2"][-1] == "better"
    # cell 3: H100 against the A100 row; cell 6: the tiny preset: not comparable
    assert table["3"][-1] == "not comparable" and table["6"][-1] == "not comparable"
    assert table["4"][-1] == "oom" and table["4"][14] == "n/a (4-bit)"
    assert "- cell 3 vs `a100/lora/1node/eager` (Phi-3-vision, 8xA100): not comparable: " \
           "GPU: NVIDIA H100 80GB HBM3 vs documented A100" in text
    assert "- cell 6 vs `a100/lora/1node/flash` (Phi-3-vision, 8xA100): not " \
           "comparable: model: tiny preset vs documented Phi-3-vision" in text
    assert "- cell 5 vs `a100/full/2node/flash` (Phi-3-vision, 16xA100): not " \
           "comparable: the cell did not finish (timeout)" in text
    failures = _table(text, "Cells that did not finish")
    assert [(f[0], f[2]) for f in failures] == [("4", "oom"), ("5", "timeout")]
    assert "CUDA out of memory" in failures[0][3] and failures[1][4] == "/logs/5.txt"


def test_implied_mfu_follows_the_documented_rows_revision_and_the_report_explains_the_frozen_rows(group, tmp_path):
    """Under the 2024-06 recipe that measured it, the documented frozen-vision flash row trained only the LM head and
    the final norm: its implied MFU is 35.4%, as plausible as the full rows' (16%, 28%), not the 86% a decoder that
    trains would need (the table rounds to 35%)."""
    text = render(group, tmp_path / "report.md").read_text()
    table = {r[0]: r for r in _table(text, "Speed")}
    full_eager, full_flash = float(table["0"][15].rstrip("%")), float(table["1"][15].rstrip("%"))
    frozen_flash = float(table["2"][15].rstrip("%"))
    assert (full_eager, full_flash, frozen_flash) == (16.3, 28.0, 35.4)
    notes = text.split("### Recipe revisions")[1].split("\n## ")[0]
    assert ("The documented frozen-vision rows of `speed_a100` (`a100/frozen_vision/1node/flash`) were measured with "
            "the 2024-06 recipe (Cookbook d2cdae5, 2024-06-27)") in notes
    assert ("only the LM head and the final norm (98.5M parameters) train, not the 3.6B of the decoder. Such a step "
            "executes 26% of a full fine-tuning step's FLOPs (speedup bound 3.84x; documented 3.67x (flash) over full "
            "fine-tuning with the same attention); a "
            "freeze that trains the decoder (the current recipe) saves only the CLIP tower's backward: bound 1.21x. "
            "Implied MFU: flash 35% (vs 86% as if today's recipe).") in notes
    assert "Implausible documented rows" not in text


def test_a_current_cell_is_not_comparable_with_a_row_the_2024_06_recipe_measured(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    store.append(_row(0, "full", "eager", 5.2, "a100/full/1node/eager", revision=None))
    store.append(_row(1, "frozen_vision", "eager", 17.0, "a100/frozen_vision/1node/eager"))
    text = render(store.directory, tmp_path / "report.md", plots=False).read_text()
    table = {r[0]: r for r in _table(text, "Speed")}
    assert table["0"][-1] == "not comparable" and table["1"][-1] == "within tolerance"
    assert "not comparable: recipe revision: current vs documented 2024-06 (Cookbook d2cdae5, 2024-06-27: no-grad " \
           "hooks on the image embedder, reentrant checkpointing, LoRA on the language model only); rerun with " \
           "recipe_revision: 2024-06" in text


def test_rendering_is_byte_identical_and_lists_the_environment(group, tmp_path):
    a = render(group, tmp_path / "a" / "report.md").read_text()
    b = render(group, tmp_path / "b" / "report.md").read_text()
    assert a == b
    assert (tmp_path / "a" / "report.assets" / "throughput.png").read_bytes() == \
        (tmp_path / "b" / "report.assets" / "throughput.png").read_bytes()
    assert "![report.assets/throughput.png](report.assets/throughput.png)" in a
    assert "| git | abc123 |" in a and "| GPUs | 8 x NVIDIA A100-SXM4-80GB |" in a


def test_accuracy_rows(tmp_path):
    row = copy.deepcopy(ROWS[0])
    row["spec"].update({"mode": "accuracy", "task": "docvqa_full", "strategy": "lora", "precision": "bf16",
                        "reference": "docvqa/lora/bf16", "lr": 2e-4, "epochs": 2.0, "lora_rank": 32,
                        "lora_alpha": 16, "weights": "pretrained", "data": "hf", "attention": "flash_attention_2"})
    row["metrics"] = {"anls": 0.83, "anls_before": 0.41, "anls_standard": 0.85}
    tiny = copy.deepcopy(row)
    tiny.update({"cell": 1, "run_id": "tiny"})
    tiny["spec"].update({"model": "tiny", "weights": "random", "data": "synthetic"})
    store = RowStore(tmp_path / "docvqa_accuracy" / "g")
    store.append(row)
    store.append(tiny)
    text = render(store.directory, tmp_path / "acc.md").read_text()
    table = {r[0]: r for r in _table(text, "Accuracy")}
    assert table["0"][7:12] == ["41.00", "83.00", "82.46", "+0.54", "within tolerance"]
    assert table["0"][12] == "standard ANLS 85.00"
    assert table["1"][11] == "not comparable"
    assert "random weights: accuracy needs the pretrained checkpoint" in text
    assert "synthetic twin data vs the real dataset" in text
    assert ("Accuracy against the guide: 1 of 2 result(s) comparable, 1 within ±10%: cell 0 anls 83.00 vs 82.46 "
            "documented (within tolerance).") in _summary(text)


@pytest.mark.slow
def test_report_of_a_real_cpu_smoke_run(tmp_path):
    env_cmd = [sys.executable, "-m", "harness"]
    results = tmp_path / "runs"
    run = subprocess.run([*env_cmd, "run", "cpu_smoke", "--results", str(results), "--filter", "strategy=lora",
                          "--filter", "attention=sdpa", "--keep-model", "--track", "tensorboard"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "cpu.md"
    report = subprocess.run([*env_cmd, "report", str(results / "cpu_smoke"), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    text = out.read_text()
    rows = RowStore(results / "cpu_smoke" / "cpu").rows()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    table = _table(text, "Speed")
    assert sorted(r[0] for r in table) == sorted(str(r["cell"]) for r in rows)
    assert all(r[-1] == "not comparable" for r in table)
    for row in rows:
        assert f"`{row['run_id']}`" in text
    # fp32 and bf16: two reason sets (fp32 also differs in precision), two comparability lines
    assert text.count("not comparable: model: tiny preset vs documented Phi-3-vision; GPU: cpu vs documented A100; "
                      "GPU count: 1 vs documented 8; global batch: 2 vs documented 64") == 2
    assert json.loads(json.dumps(rows))  # rows are plain JSON
    # --keep-model: each cell kept its adapter, and the report says where
    kept = _table(text, "Kept models")
    assert len(kept) == 2
    for row in rows:
        model_dir = results / "cpu_smoke" / "cpu" / "cells" / row["run_id"] / "model"
        assert row["artifacts"]["model"] == str(model_dir) and (model_dir / "adapter_model.safetensors").is_file()
        assert [str(row["cell"]), "lora", row["run_id"], f"`{model_dir}`"] in kept
    _the_same_run_as_data(results, rows)
    _the_same_run_in_tensorboard(results, rows)


def _the_same_run_as_data(results, rows):
    """Issue 35: the run's DataFrame: one row per cell, flat columns with units in their names, equal to the rows."""
    from harness.results import load_rows

    frame = load_rows(results / "cpu_smoke")
    assert len(frame) == len(rows) == 2 and sorted(frame["run_id"]) == sorted(r["run_id"] for r in rows)
    for column in ("matrix", "group", "cell", "status", "spec.strategy", "spec.precision", "env.torch", "images_per_s",
                   "tokens_per_s", "step_time_s_p50", "peak_rss_bytes", "peak_memory_gib", "documented.images_per_s",
                   "tracking.tensorboard.status"):
        assert column in frame.columns, column
    for record in frame.to_dict("records"):
        row = next(r for r in rows if r["run_id"] == record["run_id"])
        assert record["images_per_s"] == row["metrics"]["images_per_s"] and record["group"] == "cpu"
        assert record["peak_memory_gib"] == row["metrics"]["peak_rss_bytes"] / 2**30
        assert record["spec.precision"] == row["spec"]["precision"] and record["documented.images_per_s"] == 5.591


def _the_same_run_in_tensorboard(results, rows):
    """Issue 35: `--track tensorboard` wrote each cell's per-step loss and final metrics, read back with
    tensorboard's own reader; `harness track` afterwards finds every row there and writes nothing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for row in rows:
        assert row["tracking"]["tensorboard"]["status"] == "sent", row["tracking"]
        events = EventAccumulator(row["tracking"]["tensorboard"]["dir"])
        events.Reload()
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == list(range(1, len(row["series"]["loss"]) + 1))
        assert [e.value for e in loss] == pytest.approx(row["series"]["loss"], rel=1e-6)  # float32 in the events
        (speed,) = events.Scalars("final/images_per_s")
        assert speed.value == pytest.approx(row["metrics"]["images_per_s"], rel=1e-6)
    again = subprocess.run([sys.executable, "-m", "harness", "track", str(results / "cpu_smoke"), "--to",
                            "tensorboard"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 row(s) sent, 2 already there" in again.stdout, again.stdout + again.stderr


def test_repeats_are_reported_as_mean_and_spread(tmp_path):
    store = RowStore(tmp_path / "hateful_memes_accuracy" / "g")
    for seed, (before, after) in enumerate([(0.50, 0.90), (0.48, 0.94), (0.52, 0.92)]):
        row = copy.deepcopy(ROWS[0])
        row.update({"cell": seed, "run_id": f"s{seed}"})
        row["spec"].update({"mode": "accuracy", "task": "hateful_memes", "seed": seed, "reference": None})
        row["metrics"] = {"accuracy": after, "accuracy_before": before}
        store.append(row)
    text = render(store.directory, tmp_path / "r.md").read_text()
    (line,) = _table(text, "Accuracy")
    assert line[0] == "0, 1, 2"
    assert line[7:9] == ["50.00 ± 2.00 (n=3)", "92.00 ± 2.00 (n=3)"]


def test_data_wait_column_flags_input_bound_cells_above_five_percent(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    for row, share in zip(copy.deepcopy(ROWS[:3]), (0.04, 0.0612, None), strict=True):
        if share is not None:
            row["metrics"].update({"data_wait_share": share, "data_wait_s": share * 10, "dataloader_workers": 4})
        store.append(row)
    text = render(store.directory, tmp_path / "report.md", plots=False).read_text()
    table = {r[0]: r for r in _table(text, "Speed")}
    assert (table["0"][16], table["1"][16], table["2"][16]) == ("4.0%", "6.1% input-bound", "-")
    assert "Input-bound cells: cell 1 (full, 6.1% waiting, 4 loader worker(s))." in text
    assert "above 5% a cell is input-bound" in text


def _summary(text: str) -> list[str]:
    section = text.split("## Summary\n")[1].split("\n## ")[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def test_the_summary_comes_first_and_states_the_rows_numbers(group, tmp_path):
    text = render(group, tmp_path / "r.md").read_text()
    assert text.index("## Summary") < text.index("## Speed") and text.index("## Summary") < 600
    lines = _summary(text)
    assert lines[0] == "5 of 7 cell(s) finished ok (5 ok, 1 oom, 1 timeout)."
    assert ("Fastest: cell 2 (frozen_vision, flash, bf16) at 40 images/s, 7.69x the slowest, cell 0 (full, eager, "
            "bf16) (5.2 images/s).") in lines
    assert "Leanest: cell 6 (lora, flash, bf16) at 10.00 GiB peak memory; the most: cell 0 (full, eager, bf16) at 40.00." in lines
    # cells 0-2 are comparable (3 ran on H100, 4 and 5 did not finish, 6 is the tiny preset): only 0 within ±10%
    assert ("Against the guide: 3 of 7 speed cell(s) are comparable; 1 within ±10% of their documented images/s "
            "(cell 0), 2 outside: cell 1 -19.1%, cell 2 +26.0%.") in lines
    # under its own revision no documented row is implausible; had today's recipe measured the frozen-vision flash
    # row, it would imply 86% MFU: above the 80% threshold
    assert not [line for line in lines if line.startswith("Implausible documented rows")]
    import dataclasses

    from harness.report.documented import load_references

    refs = load_references()
    key = "a100/frozen_vision/1node/flash"
    refs[key] = dataclasses.replace(refs[key], recipe_revision="current")
    as_if = _summary(render(group, tmp_path / "as_if.md", refs=refs, plots=False).read_text())
    (implausible,) = [line for line in as_if if line.startswith("Implausible documented rows")]
    assert "`a100/frozen_vision/1node/flash` 86%" in implausible and "a100/full" not in implausible
    # the sentences follow the rows: a faster cell 1 becomes the fastest and moves inside the tolerance
    changed = copy.deepcopy(ROWS)
    changed[1]["metrics"]["images_per_s"] = 8.6
    changed[2]["metrics"]["images_per_s"] = 3.0
    store = RowStore(tmp_path / "changed" / "a100_speed" / "8xA100")
    for row in changed:
        store.append(row)
    lines = _summary(render(store.directory, tmp_path / "changed.md").read_text())
    assert any(line.startswith("Fastest: cell 6 (lora, flash, bf16) at 12 images/s, 4.00x the slowest, cell 2")
               for line in lines)
    assert any("2 within ±10% of their documented images/s (cells 0-1), 1 outside: cell 2 -90.5%" in line
               for line in lines)


def _cpu_rows(n: int, diverged: int | None = None) -> list[dict]:
    rows = []
    for cell in range(n):
        row = _row(cell, ["full", "frozen_vision", "lora", "qlora"][cell % 4], "sdpa", 20.0 + cell,
                   f"a100/{['full', 'frozen_vision', 'lora', 'qlora'][cell % 4]}/1node/eager", gpu=None, world=1,
                   model="tiny", mem_gb=0.5 + cell / 100)
        row["matrix"] = "cpu_smoke"
        row["spec"].update(global_batch=2, precision="fp32" if cell < n // 2 else "bf16")
        row["metrics"]["data_wait_share"] = 0.2 + cell / 100
        if cell == diverged:
            row.update(status="diverged", reason="non-finite loss (nan) at optimizer step 3: the training diverged")
            row["metrics"] = {}
        rows.append(row)
    return rows


def test_a_cpu_smoke_like_run_groups_comparability_and_plots_shape_not_scale(tmp_path):
    store = RowStore(tmp_path / "cpu_smoke" / "cpu")
    for row in _cpu_rows(16, diverged=5):
        store.append(row)
    text = render(store.directory, tmp_path / "cpu.md").read_text()
    lines = _summary(text)
    assert lines[0] == "15 of 16 cell(s) finished ok (15 ok, 1 diverged)."
    assert any(line.startswith("Against the guide: none of the 16 speed cell(s) is comparable") for line in lines)
    assert "Input-bound (over 5% of the step time waiting for data): cells 0-4, 6-15, 20-35% waiting" in text
    assert "Diverged: cell 5 (frozen_vision, sdpa, fp32): non-finite loss (nan) at optimizer step 3" in text
    # 16 cells, two reason sets (fp32 cells also differ in precision, the diverged one did not finish)
    section = text.split("## Comparability\n")[1].split("\n## ")[0]
    groups = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(groups) == 3, groups
    assert groups[0].startswith("- cells 0-4, 6-7 (cells 0, 4 vs `a100/full/1node/eager`; cell 1 vs "
                                "`a100/frozen_vision/1node/eager`; cells 2, 6 vs `a100/lora/1node/eager`; cells 3, 7 "
                                "vs `a100/qlora/1node/eager`): not comparable: model: tiny preset")
    assert "precision: fp32 vs documented bf16" in groups[0]
    assert any(g.startswith("- cells 8-15 (") and "precision" not in g for g in groups)
    assert any(g.startswith("- cell 5 vs `a100/frozen_vision/1node/eager` (Phi-3-vision, 8xA100): not comparable: "
                            "the cell did not finish")
               for g in groups)
    # not comparable: relative plots only, no absolute measured-vs-documented bars
    assets = tmp_path / "cpu.assets"
    assert sorted(p.name for p in assets.iterdir()) == ["relative_memory.png", "relative_throughput.png"]
    assert "![cpu.assets/relative_throughput.png](cpu.assets/relative_throughput.png)" in text
    assert all(p.stat().st_size < 40_000 for p in assets.iterdir())  # small files
    again = render(store.directory, tmp_path / "again" / "cpu.md")
    assert again.read_text().replace("again/", "") == text
    assert (tmp_path / "again" / "cpu.assets" / "relative_memory.png").read_bytes() == \
        (assets / "relative_memory.png").read_bytes()  # byte-reproducible


def test_one_reason_set_is_one_comparability_line(tmp_path):
    store = RowStore(tmp_path / "cpu_smoke" / "cpu")
    for row in _cpu_rows(16):
        row["spec"]["precision"] = "bf16"
        row["spec"]["strategy"] = "lora"
        row["spec"]["reference"] = "a100/lora/1node/eager"
        store.append(row)
    text = render(store.directory, tmp_path / "cpu.md").read_text()
    section = text.split("## Comparability\n")[1].split("\n## ")[0]
    (line,) = [line for line in section.splitlines() if line.startswith("- ")]
    assert line.startswith("- cells 0-15 vs `a100/lora/1node/eager` (Phi-3-vision, 8xA100): not comparable: model: tiny preset vs "
                           "documented Phi-3-vision; GPU: cpu vs documented A100; GPU count: 1 vs documented 8; "
                           "global batch: 2 vs documented 64")


def test_repeats_show_their_coefficient_of_variation_and_noisy_ones_are_flagged(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    for seed, images in enumerate([5.0, 5.1, 4.9]):  # CV 2%: fine
        row = _row(seed, "full", "eager", images, "a100/full/1node/eager", mem_gb=40.0)
        row["spec"]["seed"], row["run_id"] = seed, f"a{seed}"
        store.append(row)
    for seed, images in enumerate([8.0, 10.0, 6.0]):  # CV 25%: the ±10% status means nothing
        row = _row(3 + seed, "full", "flash_attention_2", images, "a100/full/1node/flash", mem_gb=35.0)
        row["spec"]["seed"], row["run_id"] = seed, f"b{seed}"
        store.append(row)
    text = render(store.directory, tmp_path / "r.md").read_text()
    table = _table(text, "Variability")
    assert table[0][:6] == ["0-2", "docvqa full eager bf16", "images_per_s", "3", "5 ± 0.1", "2.0%"]
    assert table[0][6] == ""
    assert table[1][:6] == ["3-5", "docvqa full flash_attention_2 bf16", "images_per_s", "3", "8 ± 2", "25.0%"]
    assert table[1][6] == "too noisy for the ±10% status"
    assert "Too noisy for the ±10% status (coefficient of variation over 5%): cells 3-5 images_per_s CV 25.0%." \
        in _summary(text)


def test_the_index_lists_every_report_newest_first(tmp_path, capsys):
    from harness.cli import main

    for matrix, group, finished in (("cpu_smoke", "cpu", "2026-11-01T10:00:00+00:00"),
                                    ("a100_speed", "8xA100", "2026-11-20T08:30:00+00:00")):
        store = RowStore(tmp_path / "runs" / matrix / group)
        for row in (_cpu_rows(4) if matrix == "cpu_smoke" else ROWS):
            store.append({**row, "finished_at": finished})
    import harness.report.render as report

    original = report.REPORTS
    report.REPORTS = tmp_path / "reports"
    try:
        assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 0
    finally:
        report.REPORTS = original
    index = (tmp_path / "reports" / "index.md").read_text()
    rows = [line for line in index.splitlines() if line.startswith("| [")]
    assert rows == [
        "| [a100_speed/8xA100.md](a100_speed/8xA100.md) | 2026-11-20 08:30 | a100_speed | 8xA100 | 8x NVIDIA "
        "A100-SXM4-80GB | 5 ok, 1 oom, 1 timeout |",
        "| [cpu_smoke/cpu.md](cpu_smoke/cpu.md) | 2026-11-01 10:00 | cpu_smoke | cpu | 1x cpu | 4 ok |",
    ]


def test_a_missing_mfu_shows_the_cells_own_reason(tmp_path):
    row = _row(0, "lora", "eager", 6.0, "a100/lora/1node/eager", gpu={"name": "NVIDIA H20", "memory_bytes": 96 * 2**30})
    row["unmeasured"] = {"mfu": "no peak FLOP/s known for NVIDIA H20: add its data-sheet figures to PEAKS"}
    store = RowStore(tmp_path / "a100_speed" / "8xH20")
    store.append(row)
    (line,) = _table(render(store.directory, tmp_path / "r.md", plots=False).read_text(), "Speed")
    assert "n/a (no peak FLOP/s known for NVIDIA H20: add its data-sheet figures to PEAKS)" in line


@pytest.mark.parametrize("profile", [None, "recipe-2024-06"])
def test_the_a100_grid_as_planned_is_comparable_only_under_the_revision_that_measured_the_table(tmp_path, profile):
    """Rows for every cell `plan a100_speed` lists (synthetic: the documented images/s, measured on 8xA100): today's
    recipe is not comparable with the table and says why; the recipe-2024-06 profile is, and the report explains the
    frozen rows."""
    from harness.grid.file import load_grid
    from harness.report.documented import load_references

    refs = load_references()
    grid = load_grid(ROOT / "matrices" / "a100_speed.yaml", profile)
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    for cell in grid.cells:
        spec = cell.spec.model_dump(mode="json")
        ref = refs[spec["reference"]]
        store.append({"run_id": cell.spec.run_id, "matrix": "a100_speed", "cell": cell.index, "status": "ok",
                      "reason": None, "spec": spec, "metrics": {"images_per_s": ref.values["images_per_s"].value,
                                                                 "measured_steps": 5},
                      "env": _env(A100, spec["nodes"] * 8), "log": f"/logs/{cell.index}.txt"})
    text = render(store.directory, tmp_path / "report.md", plots=False).read_text()
    verdicts = {r[0]: r[-1] for r in _table(text, "Speed")}
    if profile is None:
        assert set(verdicts.values()) == {"not comparable"}
        assert "recipe revision: current vs documented 2024-06" in text
    else:
        assert set(verdicts.values()) == {"within tolerance"}
        assert "recipe revision" not in text.split("## Comparability")[1]
    notes = text.split("### Recipe revisions")[1].split("\n## ")[0]
    assert "(`a100/frozen_vision/1node/eager`, `a100/frozen_vision/1node/flash`)" in notes
    assert "documented 3.49x (eager), 3.67x (flash) over full fine-tuning with the same attention" in notes and "bound 3.84x" in notes and "bound 1.21x" in notes


def test_the_report_puts_predicted_memory_beside_measured_with_the_ratio(tmp_path):
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    row = _row(0, "full", "eager", 5.2, "a100/full/1node/eager", mem_gb=40.0)
    row["metrics"]["peak_mem_allocated_bytes"] = int(22 * 2**30)
    row["predicted"] = {"peak_bytes": int(20 * 2**30), "phase": "optimizer step",
                        "fit": {"gpu": "A100", "fits": True, "reason": "fits (22.5 of 80.0 GiB)"}}
    store.append(row)
    unestimated = _row(1, "lora", "eager", 6.0, "a100/lora/1node/eager")
    unestimated["predicted"] = {"error": "RuntimeError: boom"}
    store.append(unestimated)
    text = render(store.directory, tmp_path / "report.md", plots=False).read_text()
    table = {r[0]: r for r in _table(text, "Memory: predicted beside measured")}
    assert table["0"][3:] == ["20.00 GiB (optimizer step)", "22.00 GiB", "40.00 GiB", "-", "1.10", "~42",
                              "fits (22.5 of 80.0 GiB)"]
    assert table["1"][3] == "not estimated: RuntimeError: boom"
    assert "does not say whether it is allocated, reserved or nvidia-smi memory" in text


def _snapshot(root):
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_report_and_compare_outputs_never_replace_a_store_or_a_users_file(group, tmp_path, capsys):
    """Issue 24 (3, 14): --out onto the row store, a user's index.md, a directory, a link (dangling too), a file
    under a file, an unwritable folder: each refused with an error naming it, before anything is written; the harness's own files are
    replaced (a rerun)."""
    from harness.cli import main

    store = group / "rows.jsonl"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.md").write_text("my notes\n")
    (mine / "link.md").symlink_to(tmp_path / "nowhere.md")
    (tmp_path / "a-file").write_text("")
    before = _snapshot(tmp_path)
    refused = ((store, "ending in .md"), (mine, "is a directory"), (mine / "link.md", "symbolic link"),
               (tmp_path / "a-file" / "x.md", "is not a directory"),
               (Path("/proc/r.md"), "cannot write in /proc"))  # unwritable even for root: tried, not asked
    for out, said in (*refused, (mine / "x.md", "the reports' index")):  # the index beside it is the user's file
        assert main(["report", str(group), "--out", str(out), "--no-plots"]) == 2, out
        assert said in capsys.readouterr().err, out
    (mine / "notes.md").write_text("mine\n")
    for out, said in (*refused, (mine / "notes.md", "not written by the harness")):
        assert main(["compare", str(group), str(group), "--out", str(out)]) == 2, out
        assert said in capsys.readouterr().err, out
    (mine / "notes.md").unlink()
    assert _snapshot(tmp_path) == before  # nothing written anywhere, the store and the user's files unchanged
    out = tmp_path / "reports" / "r.md"
    assert main(["report", str(group), "--out", str(out), "--no-plots"]) == 0
    assert main(["report", str(group), "--out", str(out), "--no-plots"]) == 0  # its own report and index: replaced
    assert main(["compare", str(group), str(group), "--out", str(tmp_path / "reports" / "c.md")]) in (0, 1)
    assert main(["compare", str(group), str(group), "--out", str(tmp_path / "reports" / "c.md")]) in (0, 1)
    assert store.read_bytes() == before[store]


def test_the_index_skips_unrelated_meta_files_and_escapes_table_text(tmp_path):
    """Issue 24 (11, 21): an unrelated *.meta.json in the reports folder is not listed (and crashes nothing); a
    group name with | or HTML stays in its cell of the index table."""
    from harness.report.index import write_index

    root = tmp_path / "reports"
    (root / "x").mkdir(parents=True)
    (root / "x" / "other.meta.json").write_text("[1, 2]")
    (root / "x" / "broken.meta.json").write_text("{")
    (root / "x" / "g.md").write_text("report")
    (root / "x" / "g.meta.json").write_text(json.dumps({"report": "g.md", "date": None, "grid": "g",
                                                        "group": "a|b<script>", "hardware": "1x cpu",
                                                        "statuses": {"ok": 1}}))
    text = write_index(root).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert rows == ["| [x/g.md](x/g.md) | - | g | a\\|b&lt;script> | 1x cpu | 1 ok |"]


def test_a_row_of_another_grid_neither_retitles_the_report_nor_joins_its_tables(tmp_path):
    """Issue 24 (18): a row copied in from another grid's store came first and retitled the report."""
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    store.append({**_row(9, "full", "eager", 99.0, "a100/full/1node/eager"), "matrix": "other<b>grid", "run_id": "x9"})
    for row in ROWS[:2]:
        store.append(row)
    out = render(store.directory, tmp_path / "report.md")
    text = out.read_text()
    assert text.splitlines()[0] == "# Report: a100_speed / 8xA100"
    assert [r[0] for r in _table(text, "Speed")] == ["0", "1"]
    assert "99.000" not in text and "x9" not in text
    assert ("Left out: 1 row(s) of another grid found in this group's store (grid other&lt;b>grid: cell 9)"
            in _summary(text)[-1])
    assert json.loads(out.with_suffix(".meta.json").read_text())["grid"] == "a100_speed"


def test_a_huge_failure_reason_is_clipped_in_the_row_the_report_and_the_run_summary(tmp_path):
    """Issue 24 (21): a 50 MB failure reason was copied whole into the report."""
    from harness.run.console import headline
    from training_core.result import REASON_LIMIT, Outcome, build_row

    huge = "boom " * 10_000_000  # 50 MB
    row = build_row(run_id="r", spec={}, outcome=Outcome(status="error", reason=huge), env={}, process_start=0)
    assert len(row["reason"]) < REASON_LIMIT + 100 and row["reason"].startswith("boom boom")
    assert row["reason"].endswith(f"({len(huge) - REASON_LIMIT} more characters: the whole message is in the "
                                  "cell's log)")
    store = RowStore(tmp_path / "a100_speed" / "8xA100")
    store.append(ROWS[0])
    store.append({**_row(4, "qlora", "eager", None, "a100/qlora/1node/eager", status="error"), "reason": huge})
    text = render(store.directory, tmp_path / "report.md").read_text()
    assert len(text) < 20_000
    (failure,) = _table(text, "Cells that did not finish")
    assert failure[3].startswith("boom boom") and failure[3].endswith("characters: the whole message is in the "
                                                                      "cell's log)")
    assert len(headline({"status": "error", "reason": huge})) < 400


def test_reading_a_long_store_holds_each_cells_newest_row_not_the_file(tmp_path):
    """Issue 24 (21): 200k rows (560 MB) took 4.1 GB to report: the whole file was read, split and parsed at once.
    Now rows are read line by line and `latest` keeps each cell's newest: the peak of Python allocations (counted by
    tracemalloc, deterministic) does not grow with the number of reruns in the file."""
    import tracemalloc

    def peak(n: int) -> int:
        store = RowStore(tmp_path / str(n) / "a100_speed" / "8xA100")
        line = []
        for i in range(n):
            row = _row(i % 2, "full", "eager", 5.0 + i, "a100/full/1node/eager")
            line.append(json.dumps({**row, "series": {"loss": [1.0] * 300}}) + "\n")  # ~3 KB, like a real row
        store.directory.mkdir(parents=True)
        store.path.write_text("".join(line))
        tracemalloc.start()
        rows, duplicated = store.latest()
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sorted(r["metrics"]["images_per_s"] for r in rows) == [5.0 + n - 2, 5.0 + n - 1]
        assert duplicated == ["id0", "id1"]
        return top

    small, large = peak(500), peak(5000)
    assert large < 1.5 * small, (small, large)  # 10x the rows; reading it all at once made this ~10x


@pytest.mark.slow
def test_concurrent_reports_into_one_folder_all_succeed(group, tmp_path):
    """Issue 24 (14): reports and their index are written whole, under a lock: 6 at once, none fails."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "report", str(group), "--no-plots", "--out",
                               str(tmp_path / "reports" / f"r{i % 3}.md")], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(6)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), [err for code, err in results if code]
    index = (tmp_path / "reports" / "index.md").read_text()
    assert index.count("| [r") == 3 and not list((tmp_path / "reports").glob(".*.tmp"))
