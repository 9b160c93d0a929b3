"""Every documented number is in results/reference and matches the guide (its tables parsed here)."""

import re
from pathlib import Path

import pytest

from harness.report.documented import load_references

ROOT = Path(__file__).resolve().parents[2]
GUIDES = [p for p in (ROOT.parent / "shared" / "seed" / "FineTuning_Vision.en.md",
                      ROOT / "results" / "reference" / "guide_tables.md") if p.exists()]
METHOD = {"full-finetuning": "full", "frozen image model": "frozen_vision", "LoRA": "lora", "QLoRA": "qlora"}


def tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables keyed by the heading above them."""
    out, heading, current = {}, None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, current = line.lstrip("#").strip(), None
        elif line.startswith("|") and not set(line) <= set("|-: "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = out.setdefault(heading, [])
                continue  # the header row
            current.append(cells)
    return out


def number(text: str) -> tuple[float, bool]:
    match = re.fullmatch(r"(~?)([\d.]+)x?", text)
    assert match, text
    return float(match.group(2)), bool(match.group(1))


@pytest.fixture(scope="module", params=GUIDES, ids=[p.name for p in GUIDES])
def guide(request):
    return tables(request.param.read_text())


def test_speed_tables(guide):
    refs = load_references()
    for heading, gpu in (("8x A100-80GB (Ampere)", "a100"), ("8x V100-32GB (Volta)", "v100")):
        rows = guide[heading]
        assert len(rows) == {"a100": 10, "v100": 5}[gpu]
        for method, nodes, gpus, flash, batch, throughput, speedup, memory in rows:
            strategy = METHOD[method]
            key = f"{gpu}/{strategy}/{nodes}node" + (("/flash" if flash == "yes" else "/eager") if gpu == "a100" else "")
            ref = refs[key]
            assert ref.settings["gpus"] == int(gpus) and ref.settings["nodes"] == int(nodes)
            assert ref.settings["flash_attention"] == (flash == "yes") and ref.settings["global_batch"] == int(batch)
            assert (ref.values["images_per_s"].value, ref.values["images_per_s"].approx) == number(throughput)
            assert ref.values["speedup"].value == number(speedup)[0]
            assert (ref.values["peak_memory_gb"].value, ref.values["peak_memory_gb"].approx) == number(memory)
            assert ref.model == "Phi-3-vision"


def test_accuracy_tables(guide):
    refs = load_references()
    docvqa = guide["DocVQA (Phi-3-vision)"]
    memes = guide["Hateful memes (Phi-3-vision)"]
    nlvr2 = guide["NLVR2 (Phi-3.5-vision)"]
    for rows, task, metric in ((docvqa, "docvqa", "anls"), (memes, "hateful_memes", "accuracy")):
        assert len(rows) == 8
        for method, dtype, rank, alpha, batch, lr, epochs, value in rows:
            ref = refs[f"{task}/{METHOD[method]}/{dtype}"]
            assert ref.values[metric].value == float(value) and not ref.values[metric].approx
            assert ref.settings["lr"] == float(lr) and ref.settings["epochs"] == int(epochs)
            assert ref.settings["global_batch"] == int(batch) and ref.model == "Phi-3-vision"
            if rank != "-":
                assert (ref.settings["lora_rank"], ref.settings["lora_alpha"]) == (int(rank), int(alpha))
    measured = [r for r in nlvr2 if r[0] == "full-finetuning"]
    assert len(measured) == 2
    for _method, frozen, _dtype, _rank, _alpha, _batch, lr, epochs, value in measured:
        ref = refs["nlvr2/frozen_vision/bf16" if frozen == "yes" else "nlvr2/full/bf16"]
        assert ref.values["accuracy"].value == float(value) and ref.model == "Phi-3.5-vision"
        assert (ref.settings["lr"], ref.settings["epochs"]) == (float(lr), int(epochs))


def test_every_reference_key_is_used_by_a_shipped_grid():
    from harness.grid.file import load_grid

    used = {c.spec.reference for p in (ROOT / "matrices").glob("*.yaml") for c in load_grid(p).runnable}
    assert set(load_references()) <= used
