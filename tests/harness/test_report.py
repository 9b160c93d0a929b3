import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import render
from harness.store import RowStore

ROOT = Path(__file__).resolve().parents[2]
A100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 85899345920}
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984}


def _env(gpu, world):
    return {"git_sha": "abc123", "git_dirty": False, "python": "3.11.7", "torch": "2.13.0", "transformers": "5.24.0",
            "gpus": [gpu] * 8 if gpu else [], "gpu_count": 8 if gpu else 0, "world_size": world, "driver": "570.1",
            "cuda": "12.8", "hostname": "node-1"}


def _row(cell, strategy, attention, images, reference, gpu=A100, world=8, status="ok", model="phi-3-vision-128k",
         mem_gb=None, mfu=None, reason=None, nodes=1):
    metrics = {"images_per_s": images, "measured_steps": 5} if images else {}
    if mem_gb:
        metrics["peak_mem_reserved_bytes"] = int(mem_gb * 2**30)
    if mfu:
        metrics["mfu"] = mfu
    spec = {"task": "docvqa", "data": "synthetic", "model": model, "weights": "random", "strategy": strategy,
            "precision": "bf16", "attention": attention, "num_crops": 16, "global_batch": 64, "per_device_batch": 1,
            "nodes": nodes, "gpus_per_node": 8, "mode": "throughput", "reference": reference, "lr": 4e-5,
            "epochs": 1.0}
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
    assert "cell 3 (lora, eager, bf16) vs `a100/lora/1node/eager` (Phi-3-vision, 8xA100): not comparable: " \
           "GPU: NVIDIA H100 80GB HBM3 vs documented A100" in text
    assert "cell 6 (lora, flash_attention_2, bf16) vs `a100/lora/1node/flash` (Phi-3-vision, 8xA100): not " \
           "comparable: model: tiny preset vs documented Phi-3-vision" in text
    assert "cell 5 (full, flash_attention_2, bf16) vs `a100/full/2node/flash` (Phi-3-vision, 16xA100): not " \
           "comparable: the cell did not finish (timeout)" in text
    failures = _table(text, "Cells that did not finish")
    assert [(f[0], f[2]) for f in failures] == [("4", "oom"), ("5", "timeout")]
    assert "CUDA out of memory" in failures[0][3] and failures[1][4] == "/logs/5.txt"


def test_implied_mfu_of_documented_rows_stands_out(group, tmp_path):
    text = render(group, tmp_path / "report.md").read_text()
    table = {r[0]: r for r in _table(text, "Speed")}
    full_eager, frozen_flash = float(table["0"][15].rstrip("%")), float(table["2"][15].rstrip("%"))
    assert 10 < full_eager < 25 and frozen_flash > 70  # the documented frozen-vision row implies ~86% MFU


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


def test_report_of_a_real_cpu_smoke_run(tmp_path):
    env_cmd = [sys.executable, "-m", "harness"]
    results = tmp_path / "runs"
    run = subprocess.run([*env_cmd, "run", "cpu_smoke", "--results", str(results), "--filter", "strategy=lora",
                          "--keep-model"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "cpu.md"
    report = subprocess.run([*env_cmd, "report", str(results / "cpu_smoke"), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    text = out.read_text()
    rows = RowStore(results / "cpu_smoke" / "cpu").rows()
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    table = _table(text, "Speed")
    assert sorted(r[0] for r in table) == sorted(str(r["cell"]) for r in rows)
    assert all(r[-1] == "not comparable" for r in table)
    for row in rows:
        assert f"`{row['run_id']}`" in text
    assert text.count("not comparable: model: tiny preset vs documented Phi-3-vision; GPU: cpu vs documented A100; "
                      "GPU count: 1 vs documented 8; global batch: 2 vs documented 64") == 4
    assert json.loads(json.dumps(rows))  # rows are plain JSON
    # --keep-model: each cell kept its adapter, and the report says where
    kept = _table(text, "Kept models")
    assert len(kept) == 4
    for row in rows:
        model_dir = results / "cpu_smoke" / "cpu" / "cells" / row["run_id"] / "model"
        assert row["artifacts"]["model"] == str(model_dir) and (model_dir / "adapter_model.safetensors").is_file()
        assert [str(row["cell"]), "lora", row["run_id"], f"`{model_dir}`"] in kept


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
