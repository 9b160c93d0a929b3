import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.grid.file import GridError, load_grid

MATRICES = Path(__file__).resolve().parents[2] / "matrices"
GRIDS = sorted(MATRICES.glob("*.yaml"))

# The guide's tables: (method, flash attention, nodes, GPUs, effective batch)
A100_ROWS = [
    ("full", False, 1, 8, 64), ("full", True, 1, 8, 64), ("full", True, 2, 16, 64), ("full", True, 4, 32, 64),
    ("frozen_vision", False, 1, 8, 64), ("frozen_vision", True, 1, 8, 64),
    ("lora", False, 1, 8, 64), ("lora", True, 1, 8, 64), ("qlora", False, 1, 8, 64), ("qlora", True, 1, 8, 64),
]
V100_ROWS = [("full", False, 1, 8, 64), ("full", False, 2, 16, 64), ("full", False, 4, 32, 64),
             ("frozen_vision", False, 1, 8, 64), ("lora", False, 1, 8, 64)]


def _rows(grid):
    return [(c.spec.strategy, c.spec.attention == "flash_attention_2", c.spec.nodes, c.spec.world_size,
             c.spec.global_batch) for c in grid.runnable]


def test_a100_grid_is_exactly_the_documented_table():
    grid = load_grid(MATRICES / "a100_speed.yaml")
    assert _rows(grid) == A100_ROWS and len(grid.cells) == 10
    assert {c.spec.task for c in grid.runnable} == {"docvqa"}
    assert {(c.spec.num_crops, c.spec.precision, c.spec.gpu) for c in grid.runnable} == {(16, "bf16", "A100")}
    assert len({c.spec.reference for c in grid.runnable}) == 10


def test_v100_grid_is_exactly_the_documented_table():
    grid = load_grid(MATRICES / "v100_speed.yaml")
    assert _rows(grid) == V100_ROWS
    assert {(c.spec.precision, c.spec.attention, c.spec.num_crops) for c in grid.runnable} == {("fp16", "eager", 16)}


def test_h100_grid_mirrors_a100_without_references():
    a100, h100 = load_grid(MATRICES / "a100_speed.yaml"), load_grid(MATRICES / "h100_speed.yaml")
    assert _rows(h100) == _rows(a100)
    assert all(c.spec.gpu == "H100" and c.spec.reference is None for c in h100.runnable)


def test_accuracy_grids_hold_the_documented_hyper_parameters():
    docvqa = {c.spec.reference: c.spec for c in load_grid(MATRICES / "docvqa_accuracy.yaml").runnable}
    assert len(docvqa) == 8
    assert (docvqa["docvqa/full/bf16"].lr, docvqa["docvqa/full/bf16"].epochs) == (5e-6, 2)
    assert docvqa["docvqa/lora/fp16"].lora_rank == 32 and docvqa["docvqa/lora/fp16"].alpha == 16
    assert docvqa["docvqa/full/bf16"].attention == "flash_attention_2" and docvqa["docvqa/full/fp16"].attention == "eager"
    memes = {c.spec.reference: c.spec for c in load_grid(MATRICES / "hateful_memes_accuracy.yaml").runnable}
    assert len(memes) == 8 and memes["hateful_memes/frozen_vision/bf16"].epochs == 3
    assert memes["hateful_memes/qlora/bf16"].lora_rank == 128 and memes["hateful_memes/qlora/bf16"].alpha == 256
    nlvr2 = {c.spec.reference: c.spec for c in load_grid(MATRICES / "nlvr2_accuracy.yaml").runnable}
    assert (nlvr2["nlvr2/full/bf16"].lr, nlvr2["nlvr2/full/bf16"].epochs) == (1e-5, 3)
    assert (nlvr2["nlvr2/frozen_vision/bf16"].lr, nlvr2["nlvr2/frozen_vision/bf16"].epochs) == (2e-5, 2)


def test_cpu_smoke_covers_every_strategy_precision_and_attention():
    grid = load_grid(MATRICES / "cpu_smoke.yaml")
    combos = {(c.spec.strategy, c.spec.precision, c.spec.attention) for c in grid.runnable}
    assert len(combos) == 16 and all(c.spec.model == "tiny" and c.spec.mode == "throughput" for c in grid.runnable)


@pytest.mark.parametrize("grid_path", GRIDS, ids=[p.stem for p in GRIDS])
def test_every_shipped_grid_plans(grid_path, capsys):
    assert main(["plan", str(grid_path)]) == 0
    assert "launch commands" in capsys.readouterr().out
    assert main(["plan", grid_path.stem, "--json"]) == 0
    specs = json.loads(capsys.readouterr().out)
    assert specs and all("run_id" in s for s in specs)
    assert not [c for c in load_grid(grid_path).cells if not c.runnable]


def _grid(tmp_path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: g\naxes: {strategy: [full\n", "g.yaml:3:1: invalid YAML"),
        ("name: g\ncolumns: 3\n", "g.yaml: columns: unknown key; a grid has name, description"),
        ("name: g\ndefaults: {stratgy: lora}\n", "g.yaml: defaults.stratgy: not a cell setting; did you mean strategy?"),
        ("name: g\naxes: {precision: []}\n", "g.yaml: axes.precision: an axis needs at least one value"),
        ("name: g\nhardware: {gpus_per_node: 0}\n", "g.yaml: hardware.gpus_per_node: Input should be greater than or equal to 1"),
        ("name: g\ndefaults: {model: '${NO_SUCH_VAR}'}\n", "${NO_SUCH_VAR} is not set"),
        ("- a\n- b\n", "a grid must be a YAML mapping"),
        ("name: 'bad name'\n", "g.yaml: name: String should match pattern"),
    ],
)
def test_invalid_grids_name_the_file_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(GridError) as info:
        load_grid(_grid(tmp_path, text))
    assert message in str(info.value)


def test_invalid_and_excluded_cells_are_listed_with_reasons(tmp_path, capsys):
    path = _grid(tmp_path, """
name: rules
hardware: {gpu: V100, gpus_per_node: 8}
defaults: {model: tiny, global_batch: 8}
axes:
  strategy: [full, qlora]
  precision: [fp16, bf16]
include:
  - {strategy: lora, precision: fp16, attention: flash_attention_2}
  - {strategy: lora, precision: fp16, global_batch: 12}
exclude:
  - {match: {strategy: full, precision: fp16}, reason: covered by the v100 grid}
""")
    grid = load_grid(path)
    by = {(c.fields["strategy"], c.fields["precision"], c.fields.get("attention", "sdpa")): c for c in grid.cells}
    assert by[("full", "fp16", "sdpa")].status == "excluded"
    assert by[("full", "fp16", "sdpa")].reason == "covered by the v100 grid"
    assert "V100 has no bf16" in by[("full", "bf16", "sdpa")].reason
    assert "QLoRA's 4-bit kernels (bitsandbytes) need a Turing or newer GPU; V100 is sm_70" in by[("qlora", "fp16", "sdpa")].reason
    assert "flash attention needs bf16" in by[("lora", "fp16", "flash_attention_2")].reason
    bad_batch = [c for c in grid.cells if c.fields.get("global_batch") == 12][0]
    assert bad_batch.status == "invalid" and "global_batch: 12 is not a multiple" in bad_batch.reason
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "covered by the v100 grid" in out and "excluded" in out and "invalid" in out


def test_profiles_and_per_cell_limits(tmp_path):
    path = _grid(tmp_path, """
name: prof
hardware: {gpu: A100, gpus_per_node: 4}
defaults: {model: phi-3.5-vision, global_batch: 64, lr: 1.0e-5}
limits: {timeout_s: 100}
include:
  - {strategy: full, timeout_s: 5, memory_gb: 2}
  - {strategy: lora}
profiles:
  tiny:
    hardware: {gpu: cpu, gpus_per_node: 1}
    override: {model: tiny, global_batch: 2, lr: 1.0e-3}
""")
    plain, tiny = load_grid(path), load_grid(path, profile="tiny")
    assert [c.spec.model for c in plain.runnable] == ["phi-3.5-vision"] * 2
    assert [(c.spec.model, c.spec.gpu, c.spec.lr, c.spec.global_batch) for c in tiny.runnable] == \
        [("tiny", "cpu", 1e-3, 2)] * 2
    assert (plain.cells[0].limits.timeout_s, plain.cells[0].limits.memory_gb) == (5, 2)
    assert plain.cells[1].limits.timeout_s == 100
    with pytest.raises(GridError, match="profiles.huge: no such profile"):
        load_grid(path, profile="huge")


def test_profile_patches_set_values_on_matching_cells_only(tmp_path):
    text = """
name: patched
defaults: {model: tiny, global_batch: 2}
include:
  - {strategy: full, lr: 1.0e-5}
  - {strategy: full, lr: 1.0e-5, precision: fp32}
  - {strategy: frozen_vision, lr: 2.0e-5}
profiles:
  tiny:
    override: {lr: 3.0e-3, epochs: 15}
    patches:
      - {match: {strategy: full}, set: {lr: 3.0e-4, epochs: 30}, reason: trainable CLIP drifts at 3e-3}
"""
    path = _grid(tmp_path, text)
    plain, tiny = load_grid(path), load_grid(path, profile="tiny")
    assert [(c.spec.strategy, c.spec.lr, c.spec.epochs) for c in plain.runnable] == [
        ("full", 1e-5, 1), ("full", 1e-5, 1), ("frozen_vision", 2e-5, 1)]
    assert [(c.spec.strategy, c.spec.precision, c.spec.lr, c.spec.epochs) for c in tiny.runnable] == [
        ("full", "bf16", 3e-4, 30), ("full", "fp32", 3e-4, 30), ("frozen_vision", "bf16", 3e-3, 15)]
    with pytest.raises(GridError, match=r"profiles.tiny.patches\[0\].match: .* matches no cell"):
        load_grid(_grid(tmp_path, text.replace("strategy: full}, set", "strategy: lora}, set")), profile="tiny")
    with pytest.raises(GridError, match=r"profiles.tiny.patches\[0\].set.epoch: not a cell setting"):
        load_grid(_grid(tmp_path, text.replace("epochs: 30}", "epoch: 30}")), profile="tiny")


def test_gpu_smoke_takes_the_gpus_of_the_machine():
    from harness.grid.hardware import Machine

    two_h200 = load_grid(MATRICES / "gpu_smoke.yaml", machine=Machine(("NVIDIA H200",) * 2))
    specs = [c.spec for c in two_h200.runnable]
    assert len(specs) == 8 and two_h200.auto_hardware
    assert {(s.gpu, s.gpus_per_node, s.global_batch, s.per_device_batch, s.grad_accum) for s in specs} == \
        {("H200", 2, 8, 1, 4)}
    assert {(s.model, s.weights, s.num_crops, s.precision, s.warmup_steps, s.measured_steps) for s in specs} == \
        {("phi-3.5-vision", "random", 16, "bf16", 1, 3)}
    assert {s.strategy for s in specs} == {"full", "frozen_vision", "lora", "qlora"}
    assert {s.attention for s in specs} == {"sdpa", "flash_attention_2"}
    many = load_grid(MATRICES / "gpu_smoke.yaml", machine=Machine(("NVIDIA A100-SXM4-80GB",) * 16))
    assert {(c.spec.gpu, c.spec.gpus_per_node, c.spec.global_batch) for c in many.runnable} == {("A100", 8, 32)}
    none = load_grid(MATRICES / "gpu_smoke.yaml", machine=Machine(()))
    assert {(c.spec.gpu, c.spec.gpus_per_node) for c in none.runnable} == {("auto", 1)}


def test_batch_per_gpu_and_global_batch_exclude_each_other(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nhardware: {gpu: cpu, gpus_per_node: 2}\n"
                    "defaults: {model: tiny, batch_per_gpu: 3}\ninclude:\n  - {}\n  - {global_batch: 6}\n")
    with pytest.raises(GridError, match=r"g.yaml: cell 1: both global_batch and batch_per_gpu are set"):
        load_grid(path)
    path.write_text(path.read_text().replace("  - {global_batch: 6}\n", ""))
    (cell,) = load_grid(path).cells
    assert cell.spec.global_batch == 6 and cell.spec.gpus_per_node == 2


def test_gpu_smoke_on_a_cpu_machine_is_refused_with_the_reason(capsys):
    assert main(["run", "gpu_smoke", "--results", "/nonexistent/never-written"]) == 2
    assert "the grid is for this machine's GPUs but this machine has no NVIDIA GPU" in capsys.readouterr().err
    assert main(["run", "gpu_smoke", "--launcher", "slurm", "--dry-run"]) == 2
    assert "not through --launcher slurm" in capsys.readouterr().err


def test_silent_acceptance_is_gone(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    # an exclude rule that matches no cell (like a profile patch that matches none)
    path.write_text("name: g\ndefaults: {model: tiny}\naxes: {strategy: [full, lora]}\n"
                    "exclude:\n  - {match: {strategy: qlora}, reason: typo}\n")
    with pytest.raises(GridError, match=r"g.yaml: exclude\[0\].match: \{'strategy': 'qlora'\} matches no cell"):
        load_grid(path)
    # a key given twice in one mapping (YAML keeps the last one silently)
    path.write_text("name: g\ndefaults: {model: tiny, lr: 1.0e-3}\ninclude:\n  - {strategy: full, lr: 2.0e-4,"
                    " lr: 3.0e-4}\n")
    with pytest.raises(GridError, match=r"g.yaml:4:.*duplicate key 'lr' \(first at line 4\)"):
        load_grid(path)
    # a grid of millions of cells is counted, not expanded
    path.write_text("name: g\ndefaults: {model: tiny}\naxes: {seed: [" + ", ".join(map(str, range(1000))) + "],"
                    " lr: [" + ", ".join(f"{i + 1}.0e-4" for i in range(1000)) + "]}\n")
    with pytest.raises(GridError, match=r"the grid expands to 1,000,000 cells, more than --max-cells 10,000"):
        load_grid(path)
    assert main(["plan", str(path), "--max-cells", "50"]) == 2
    with pytest.raises(SystemExit):
        main(["run", "cpu_smoke", "--timeout", "-1"])
    assert "--timeout: -1 must be a finite number above 0" in capsys.readouterr().err


def test_a_long_throughput_cell_does_not_synthesise_a_twin_per_step():
    from training_core.inputs import MAX_TWIN_TRAIN, needed_train_examples
    from training_core.spec import RunSpec

    assert needed_train_examples(RunSpec(measured_steps=10**12)) == MAX_TWIN_TRAIN
    assert needed_train_examples(RunSpec(global_batch=64, warmup_steps=2, measured_steps=5)) == 448  # unchanged
    assert needed_train_examples(RunSpec(global_batch=2048, measured_steps=10)) == 2048  # one batch at least


def test_a_results_group_counts_the_gpus_its_cells_use_not_the_machines():
    from harness.grid.hardware import Machine, group_label

    box = Machine(("NVIDIA A100-SXM4-80GB",) * 8)
    assert group_label(box, "A100", 2) == "2xA100"  # 2-GPU cells on an 8-GPU box
    assert group_label(box, "A100", 8) == "8xA100"
    assert group_label(box, "cpu", 1) == "cpu"  # a CPU grid runs on the CPU (training_core.devices)
    assert group_label(Machine(("NVIDIA H200",)), "auto", 8) == "1xH200"  # never more than the machine has
    assert group_label(Machine(()), "A100", 8) == "cpu"
    two = load_grid(MATRICES / "gpu_smoke.yaml", machine=Machine(("NVIDIA H200",) * 2))
    assert group_label(Machine(("NVIDIA H200",) * 2), two.file.hardware.gpu, two.file.hardware.gpus_per_node) == \
        "2xH200"


def test_an_alias_bomb_a_deep_grid_and_other_encodings_are_errors_in_milliseconds(tmp_path):
    """Issue 24 (8, 13): a 9-level "billion laughs" (3 ms to parse, minutes and gigabytes once expanded), a grid
    nested 2000 deep, UTF-16 and invalid UTF-8: each a GridError naming the file, fast."""
    import time

    lines = ["name: g", "hardware: {gpu: cpu}", 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join([*lines, "description: *a9"]) + "\n")
    (tmp_path / "deep.yaml").write_text("name: g\nx: " + "[" * 2000 + "]" * 2000 + "\n")
    (tmp_path / "utf16.yaml").write_bytes("name: g\n".encode("utf-16"))
    (tmp_path / "latin1.yaml").write_bytes(b"name: g\ndescription: caf\xe9\n")
    said = {"bomb": "expands to more than 100000 values", "deep": "nested too deeply",
            "utf16": "is UTF-16 text; save the grid as UTF-8", "latin1": "latin1.yaml:2: not UTF-8 text"}
    for name, text in said.items():
        started = time.monotonic()
        with pytest.raises(GridError, match=text.replace("(", r"\(")):
            load_grid(tmp_path / f"{name}.yaml")
        assert time.monotonic() - started < 20, name


def test_rich_markup_in_a_grids_text_is_printed_as_written(tmp_path, capsys):
    """Issue 24 (10): brackets in a description, an exclude reason and a cell's failure reason are text: no
    MarkupError, nothing dropped."""
    from harness.cli import main

    path = tmp_path / "g.yaml"
    path.write_text("name: g\ndescription: 'too slow [see notes/] and [/x]'\nhardware: {gpu: cpu, gpus_per_node: 1}\n"
                    "defaults: {model: tiny, task: docvqa, strategy: lora, precision: fp32, global_batch: 2}\n"
                    "include:\n  - {seed: 0}\n  - {seed: 1}\n"
                    "exclude:\n  - {match: {seed: 1}, reason: 'skip [/x] [see notes/]'}\n")
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "too slow [see notes/] and [/x]" in out and "skip [/x] [see notes/]" in out
    assert main(["run", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    assert "excluded: skip [/x] [see notes/]" in capsys.readouterr().out
